"""The network: Table 1's layer lists (`arch`), the Linen module (`vgg`), its layers and ops,
initialisers, named features and the parameter summary. Knows nothing of weight files.
"""
