"""The repository's own shared code: where data sets live and how to fetch them.

Nothing about training lives here; every version keeps its own training code so
that `diff -ru vN vN+1` shows the whole lesson.
"""
