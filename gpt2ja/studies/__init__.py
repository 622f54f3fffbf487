"""Studies: the seed project's guesses about vocabulary size and sampling, answered with measurements.

Each study is one command that runs the real pipeline stages (every step an
artifact with a manifest, so an interrupted study resumes) and writes a report
under ``docs/studies/``: a Markdown page with the table, PNG plots, the CSV of
every number, the exact command, the machine and a conclusion written from the
numbers::

    gpt2ja study vocab --config configs/studies/vocab.yaml
    gpt2ja study sampling --run data/bulk/runs/tiny-sp8k --config configs/studies/sampling.yaml

Modules: :mod:`gpt2ja.studies.metrics` (text metrics on characters, no model);
:mod:`gpt2ja.studies.vocab` (config and pipeline), :mod:`gpt2ja.studies.vocab_data` (corpus,
training pool, evaluation texts) and :mod:`gpt2ja.studies.vocab_report`;
:mod:`gpt2ja.studies.sampling` (config, prompts, decoding, scoring) and
:mod:`gpt2ja.studies.sampling_report`; :mod:`gpt2ja.studies.report` (tables, CSV, plots,
machine); :mod:`gpt2ja.studies.common` (config loading, errors); :mod:`gpt2ja.studies.cli`
(the ``gpt2ja study`` commands).
Importing any of them loads neither TensorFlow nor MeCab: the stages import
those inside the functions that need them.
"""
