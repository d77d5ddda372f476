"""A local test hub: model folders served over HTTP the way ModelScope and Hugging Face serve them.

Not a download helper but a stand-in for the real hubs, so that the *real* download path of
notebook ``01_download_model`` (``modelscope.snapshot_download``,
``huggingface_hub.snapshot_download``, :func:`helpers.download.download_model`) can run without
Internet: in tests, in CI, and in classrooms behind a firewall (the ``smol`` and ``tiny``
profiles serve their locally built model with it). It listens on ``127.0.0.1``::

    with LocalModelHub({"course/tiny-qwen2": Path("models/tiny-qwen2")}) as hub:
        with hub.use():                 # MODELSCOPE_ENDPOINT and HF_ENDPOINT point here until exit
            snapshot_download("course/tiny-qwen2", local_dir="/tmp/tiny")

What it offers a test:

* the exact subset of both HTTP APIs the clients call (:mod:`.modelscope_api`,
  :mod:`.huggingface_api`), with sizes and hashes the clients verify (:mod:`.catalogue`);
* a record of every request, :attr:`LocalModelHub.request_log` (method, path, status, ``Range``,
  bytes sent), so tests count requests and bytes instead of timing anything;
* injected faults (:mod:`.faults`): a dropped connection, corrupted bytes, or a download held
  at a known point until released (:meth:`LocalModelHub.hold`).

Where each part lives: :mod:`.hub` (the class), :mod:`.server` (HTTP plumbing, file bytes and
ranges), :mod:`.api` (which URL goes to which protocol).
"""

from .catalogue import DEFAULT_EXCLUDE
from .hub import HubRequest, LocalModelHub, pointing_modelscope_at

__all__ = ["DEFAULT_EXCLUDE", "HubRequest", "LocalModelHub", "pointing_modelscope_at"]
