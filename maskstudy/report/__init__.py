"""Run folders and the pipeline that fills them: what a run writes (:mod:`.outputs`: tables, figures, run metadata
and summary), the run's ``index.html`` (:mod:`.index_page`), the README's results section and ``docs/``
(:mod:`.readme`), the figures the notebooks share (:mod:`.figures`), the papermill pipeline behind
``python -m maskstudy run`` (:mod:`.pipeline`) and the tidying of progress bars in executed notebooks
(:mod:`.progress`). The last stage: it may import every other one. A new figure goes in :mod:`.figures`.
"""
