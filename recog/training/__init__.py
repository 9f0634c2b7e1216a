"""Training, in parts: ``step`` (one optimisation step: ``StepRunner``, ``TrainNet``), ``loop`` (the
epochs: ``EpochLoop``), ``resume`` (``Checkpoints``, ``find_run_to_resume``), ``resume_config`` (the
config of a resumed run) and ``run_lock`` (one training per run dir). The train stage
(``recog.stages.train.run``) puts them together."""
