"""The built-in datasets' loaders, one module per dataset family.

Every loader takes ``(root, train_transform=None, eval_transform=None, **options)`` and returns
a ``DatasetBundle`` (pipeline.data.bundle); pipeline.data.records names each dataset's loader.
"""
