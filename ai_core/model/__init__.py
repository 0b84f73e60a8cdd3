"""The Ki-67 model: a cascaded multi-modal Transformer, its bundle, training and inference."""
