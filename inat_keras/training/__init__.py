"""Running a training job: the kinds of run, the staged fit loop and its callbacks, optimizers, schedules, losses,
where it computes (distribution), the learning-rate finder. Imports data, models, inference and outputs."""
