"""Built-in pipelines: raw data in (a WAV file, a photo, a page, a sentence), answers out.

A pipeline is a bundle (``bundle.py``): a manifest naming one built-in kind plus the ONNX graphs
and data files (tokenizer, label names) it runs. Uploading one never uploads code: every
processing step is either one of the bundle's ONNX graphs, validated like any model, or a stage
of blindinfer's own (measured) code in this package, chosen by the manifest's ``kind``.
"""
