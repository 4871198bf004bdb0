"""The built-in experiments, one package each (the plug-in interface: `laminae.experiment`).

    qkv           experiment 1 (seed 000): RSA and category selectivity of Q, K, V per layer
    adjustments   experiment 2 (seed 003): cosine between the attention and MLP adjustments
    pathlength    seed 003's course module: path length of each sublayer's step against the
                  block's, cumulative length against displacement, per token
    rotations     the angles of the residual stream: per block, and between consecutive tokens

Every sub-package here is an experiment; a lab's own live outside laminae, in the folders or
modules named by `experiment_packages` (docs/WRITING_AN_EXPERIMENT.md).
"""
