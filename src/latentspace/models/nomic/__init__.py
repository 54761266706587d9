"""Nomic Embed models (nomic-embed-text v1/v1.5, nomic-embed-vision) as native PyTorch modules,
loaded strictly from local directories: no `trust_remote_code`, no hub, any transformers version.

    text.py          the NomicBERT forward pass (nomic-embed-text)
    text_config.py   its config.json, either spelling
    text_dir.py      its directories: recognise, load strictly, save
    tokenizer.py     its tokenizer, offline
    vision.py        the nomic-embed-vision forward pass
    vision_config.py its config.json
    vision_dir.py    its directories: recognise, load strictly, save
    preprocess.py    its image preprocessing
    weights.py       reading a directory's weights, loading them strictly
    release.py       which release (v1, v1.5) a directory holds
    pair.py          the vision model as an Embedder, in its text model's space
    backbone.py      the vision model as a vision tower's backbone, for training on
"""
