"""What each architecture must be, in one table: the registry is checked against it, so an
architecture registered without a row here fails its tests."""

# name: parameters, the notebook's lr and L2 (the defaults), channels-last by default.
EXPECTED = {
    "ShallowCNN": {"params": 370_048, "lr": 2e-3, "l2": 1e-2, "channels_last": False},
    "DeepCNN": {"params": 251_890, "lr": 1e-3, "l2": 1e-3, "channels_last": True},
    "ResNN": {"params": 93_712, "lr": 1e-3, "l2": 1e-2, "channels_last": True},
    "ResNNBatch": {"params": 93_748, "lr": 1e-3, "l2": 1e-2, "channels_last": False},
    "ResNNBatch_NoSkip": {"params": 93_748, "lr": 1e-3, "l2": 1e-2, "channels_last": False},
    "ResNNBatch_Skip": {"params": 93_856, "lr": 1e-3, "l2": 1e-2, "channels_last": False},
}
