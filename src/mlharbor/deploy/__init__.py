"""Deployment targets: package a registered version for a platform and (optionally) ship it.

``catalog.get_target(name)`` gives a :class:`~mlharbor.deploy.base.Target`; each turns a
version and its image into a plan of files and remote resources (``--dry-run`` prints it).
``container`` writes the OCI build context every target deploys; ``handlers`` hold the code
that runs inside serverless images.
"""
