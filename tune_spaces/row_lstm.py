"""Row LSTM (section 3.1): depth, width, row kernel and the RMSProp learning rate.

The paper tuned learning rates by hand per dataset (section 5.2); this space searches them.
"""

from ray import tune

SPACE = {
    "model.layer": "row_lstm",
    "model.num_layers": tune.choice([4, 7, 12]),
    "model.hidden_channels": tune.choice([48, 96, 129]),
    "model.head_channels": tune.choice([96, 255, 510]),
    "model.row_kernel": tune.choice([3, 5]),
    "optim.optimizer": "rmsprop",
    "optim.lr": tune.loguniform(1e-4, 3e-3),
    "optim.warmup_steps": tune.choice([0, 100, 500]),
}
