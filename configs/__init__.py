"""The config files, installed as the package `semclip_jax.configs` (setup.cfg maps this folder to
it), so that an installed copy finds `--config=shapes` by name. Each file defines
`get_config(arg)` and imports only `semclip_jax.config`."""
