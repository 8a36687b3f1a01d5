"""Better negatives: the shared library behind the course.

Importing the package first imports ``course_lib.utils``, which sets ``OMP_WAIT_POLICY=PASSIVE`` (and the
offline switches) before any submodule imports torch; import ``course_lib`` before torch in your own code too.
"""

from course_lib import utils  # noqa: F401  (must run before torch is imported)
