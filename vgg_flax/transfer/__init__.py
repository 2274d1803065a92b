"""Transfer learning (the paper's Appendix B): image descriptors, linear probes, fine-tuning.

- `descriptors`: the net applied densely at several scales, relu7 averaged over space and flips,
  scales averaged or stacked, L2-normalised (`vgg-flax features`);
- `images`: an image folder's files and its class labels (class subfolders);
- `probe`: a linear SVM (or logistic regression) on descriptors (`vgg-flax probe`);
- `freezing`: which layers a fine-tuning run freezes, and each layer's learning-rate multiplier;
- `finetune`: a fine-tuning config completed from the weights' usage record.
"""
