"""Benchmarks of SemCLIP training: `python -m semclip_jax.bench --what=...` (see `__main__`).

One module per measurement, each light to import beside the others (none imports the CLI):

  flops       the analytic FLOP model of a train step, and the matmul FLOPs of a traced program
  results     what every measurement shares: JSON lines, XLA memory analysis, machine stamp, rates
  peak        the dense matmul peak MFU is quoted against (`--what=peak`)
  step        the timed train step (`--what=step`)
  input_rate  the input pipeline's records/s (`--what=input`)
  scale       sharded-loss memory and the pod-scale compile on forced host devices
              (`--what=loss_memory|pod`)
  evaluation  two eval rounds of the sugarcrepe_pp config's evaluators: items/s, compilations
              and pipeline passes (`--what=eval`)
  peers       the same step in PyTorch open_clip, side by side: `python -m semclip_jax.bench.peers`
              (needs the `bench` extra; nothing else imports it)

The runtime (models, losses, trainer, data, evaluators) never imports this package.
"""
