"""Captioning metrics on strings (file name -> caption): no arrays, no model, no tokenizer of ours.

One module per job; callers import the module they use (`from audiocap_jax.metrics import scoring`):

  caption_files  predictions / candidates / references files, and `align` (names checked, nothing dropped silently)
  java        the JVM tools: Java check, failure isolation, the PTB tokenizer, the METEOR process
  spice_jar   SPICE: are its jars and a JDK there, and the run through our own `java` call
  coco        what pycocoevalcap's scorers lack: BLEU statistics for resampling, METEOR in one JVM, SPIDEr-max
  dcase       the model-based DCASE metrics (SBERT-sim, FER, FENSE / SPIDEr-FL penalty) and their download
  keywords    keyword precision / recall / F1 of AudioSet keyword outputs
  scorecard   `CaptionScores`, the metric names, the markdown table and the JSON file
  scoring     presets, `ScoreOptions` and `score` (every metric of a preset, bootstrap intervals), checkpoint metric

Pipeline of `scoring.score`:
  align -> Stanford PTB tokenisation, one JVM for predictions and references (pycocoevalcap's jar, flags and
  punctuation list) -> pycocoevalcap Bleu(4), Meteor, Rouge, Cider on the tokenised text, so numbers are
  identical to pycocoevalcap's own scorers (and hence comparable with DCASE results) -> SPICE when the
  Stanford CoreNLP 3.6.0 jars are installed (scripts/get_stanford_models.sh), otherwise SPICE and SPIDEr are
  None with a one-line fix, never 0 -> the preset's DCASE metrics on the same tokenised text, SPIDEr-max over
  N-best candidates, and optional bootstrap 95% intervals (clips resampled, seeded).
"""
