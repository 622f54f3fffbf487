"""Studies: the seed project's guesses about vocabulary size and sampling, answered with measurements.

Each study is one command that runs the real pipeline stages (every step an
artifact with a manifest, so an interrupted study resumes) and writes a report
under ``docs/studies/``: a Markdown page with the table, PNG plots, the CSV of
every number, the exact command, the machine and a conclusion written from the
numbers::

    gpt2ja study vocab --config configs/studies/vocab.yaml
    gpt2ja study sampling --run data/bulk/runs/tiny-sp8k --config configs/studies/sampling.yaml

Modules: :mod:`studies.metrics` (text metrics on characters, no model);
:mod:`studies.vocab` (config and pipeline), :mod:`studies.vocab_data` (corpus,
training pool, evaluation texts) and :mod:`studies.vocab_report`;
:mod:`studies.sampling` (config, prompts, decoding, scoring) and
:mod:`studies.sampling_report`; :mod:`studies.report` (tables, CSV, plots,
machine); :mod:`studies.common` (config loading, errors); :mod:`studies.cli`
(the ``gpt2ja study`` commands).
Importing any of them loads neither TensorFlow nor MeCab: the stages import
those inside the functions that need them.
"""
