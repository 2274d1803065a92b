"""VGG frozen inside other models: LPIPS, content and style losses, and their shared trunk."""
