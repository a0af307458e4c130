"""Which layer type, depth, width and optimizer give the best bits/dim (sections 3 and 5).

Layer type x depth x hidden channels x residual/skip connections x head size, with RMSProp (the
paper's choice) vs Adam x log-uniform learning rate x batch size x gradient clip x warm-up.
"""

from ray import tune

SPACE = {
    "model.layer": tune.choice(["row_lstm", "diagonal_bilstm", "pixelcnn"]),
    "model.num_layers": tune.choice([2, 4, 7]),
    "model.hidden_channels": tune.choice([24, 48, 96]),
    "model.residual": tune.choice([True, False]),
    "model.skip": tune.choice([True, False]),
    "model.head_channels": tune.choice([48, 96, 192]),
    "optim.optimizer": tune.choice(["rmsprop", "adam"]),
    "optim.lr": tune.loguniform(1e-4, 3e-3),
    "train.batch_size": tune.choice([8, 16, 32]),
    "optim.grad_clip_norm": tune.choice([0.0, 1.0, 5.0]),
    "optim.warmup_steps": tune.choice([0, 20, 100]),
}
