"""Diagonal BiLSTM (section 3.2): depth, width, learned initial state and the RMSProp rate."""

from ray import tune

SPACE = {
    "model.layer": "diagonal_bilstm",
    "model.num_layers": tune.choice([4, 7, 12]),
    "model.hidden_channels": tune.choice([48, 96, 129]),
    "model.head_channels": tune.choice([96, 255, 510]),
    "model.learn_initial_state": tune.choice([False, True]),
    "optim.optimizer": "rmsprop",
    "optim.lr": tune.loguniform(1e-4, 3e-3),
    "optim.warmup_steps": tune.choice([0, 100, 500]),
}
