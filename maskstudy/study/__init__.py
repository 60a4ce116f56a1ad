"""The study itself: what it trains and tests, and what it concludes.

* :mod:`.design`: which models, seeds, names and tests, in which order (one place);
* :mod:`.experiment`: training and evaluating one network with the profile's settings (notebooks 03 and 04);
* :mod:`.testsets` (every test of one model), :mod:`.reference` (the same tests for a pretrained teacher) and
  :mod:`.pretrained_track` (dlib's network fine-tuned with SE or CBAM);
* :mod:`.comparisons` (seed spread, differences, Holm), :mod:`.findings` and :mod:`.answer` (the sentences and
  the one-screen answer computed from the tables).

May import every earlier stage; only :mod:`maskstudy.report` and the notebooks import it. A new comparison goes in
:mod:`.comparisons`, a new test in :mod:`.testsets`.
"""
