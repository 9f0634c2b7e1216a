"""Training, in parts: ``trainer`` (the loop: ``Trainer``), ``callbacks`` (what a run does at the
loop's fixed points: best model, checkpoints, MLflow, bad images, stopping on a signal), ``step``
(one optimisation step: ``StepRunner``, ``TrainNet``), ``strategy`` (how the step runs, chosen
once: dygraph or ``compile`` (compiled programs), the finite check, ``prefetch``, ``depthwise``),
``resume`` (``Checkpoints``, ``find_run_to_resume``), ``resume_config`` (the config of a resumed
run) and ``run_lock`` (one training per run dir). ``recog.builders.build_trainer`` puts them
together; the train stage (``recog.stages.train.run``) runs them."""
