"""Code shared by the training job and the server.

Nothing here imports TensorFlow: the serving image installs this package without it.
The model contract (``contract``), image decode+resize (``imaging``), object storage
(``storage``) and typed configuration (``config``) live here so that training and
serving cannot drift apart.
"""

__version__ = "0.1.0"
