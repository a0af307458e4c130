"""PixelCNN (section 3.4): residual blocks, kernel size, width and the learning rate."""

from ray import tune

SPACE = {
    "model.layer": "pixelcnn",
    "model.num_layers": tune.choice([8, 15, 20]),
    "model.hidden_channels": tune.choice([48, 96, 129]),
    "model.head_channels": tune.choice([96, 255, 510]),
    "model.pixelcnn_kernel": tune.choice([3, 5]),
    "optim.optimizer": tune.choice(["rmsprop", "adam"]),
    "optim.lr": tune.loguniform(1e-4, 3e-3),
}
