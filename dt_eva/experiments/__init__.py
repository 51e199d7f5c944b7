"""The experiments: drivers that compose the library into runs.

Each reads top to bottom: config -> validate -> claim the run directory -> build -> train -> finish.
- `pretrain.run_pretrain(cfg)`: `dt-eva pretrain`
- `finetune.run_finetune(cfg)`: `dt-eva finetune`
- `evaluate.evaluate_run(run_dir)`: `dt-eva evaluate`
- `demo.run_demo()`: `dt-eva demo`
"""
