"""Declarative Ray Tune search spaces for `pixelrnn tune --space NAME`.

Each space maps experiment-config dotted paths (`model.hidden_channels`, `optim.lr`...) to a
constant or a `ray.tune` search primitive; a sampled trial is the experiment config with those
keys overridden. Hidden and head sizes are multiples of 3 so R/G/B groups split evenly
(section 3.4 of van den Oord et al. 2016), which also suits 1-channel data.
"""

from tune_spaces import cross_architecture, diagonal_bilstm, pixelcnn, row_lstm

SPACES = {
    "row_lstm": row_lstm.SPACE,
    "diagonal_bilstm": diagonal_bilstm.SPACE,
    "pixelcnn": pixelcnn.SPACE,
    "cross_architecture": cross_architecture.SPACE,
}
