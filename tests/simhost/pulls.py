"""What the simulated kubelet does with a container's image before it starts the container.

The image must be in the node container's own containerd store (``kind load image-archive`` puts it
there) or be pulled from the simulated registry (:mod:`tests.simhost.registry`), which records the
contact and fails without network (``registry:fail``). The pull policy is Kubernetes' default:
``Always`` for ``:latest`` or untagged images, ``IfNotPresent`` otherwise. A pod with an image it cannot
get stays Pending with ``ErrImagePull``; the image is pulled once, without back-off.
Standard library only (it runs in the node-container process).
"""

from __future__ import annotations

from typing import Any

from tests.simhost import registry

Obj = dict[str, Any]


def pull_policy(container: Obj, ref: registry.Reference) -> str:
    """Return the container's imagePullPolicy, defaulted as the API server does."""
    if container.get("imagePullPolicy"):
        return str(container["imagePullPolicy"])
    return "Always" if ref.tag == "latest" and not ref.digest else "IfNotPresent"


def image_problem(container: Obj, store: registry.ImageStore) -> tuple[str, str] | None:
    """Return None when the container's image is there (pulled now if needed), else (reason, message)."""
    image = str(container.get("image") or "")
    try:
        ref = registry.parse(image)
    except registry.RegistryError as exc:
        return "InvalidImageName", f'Failed to apply default image tag "{image}": couldn\'t parse image name: {exc}'
    policy = pull_policy(container, ref)
    present = bool(store.find(image))
    if policy == "Never":
        return None if present else ("ErrImageNeverPull", f'Container image "{image}" is not present with pull '
                                     "policy of Never")
    if present and policy == "IfNotPresent":
        return None
    try:
        registry.pull(store, image, "kubelet", [registry.local_platform()])
    except registry.RegistryError as exc:
        return "ErrImagePull", f'failed to pull and unpack image "{ref.name}": {exc}'
    return None


def unavailable(pod: Obj, store: registry.ImageStore) -> dict[str, tuple[str, str]]:
    """Return, per container of ``pod`` whose image cannot be had, the waiting reason and message."""
    found = {}
    for container in pod["spec"].get("containers") or []:
        problem = image_problem(container, store)
        if problem is not None:
            found[container["name"]] = problem
    return found


def waiting_status(status: Obj, problems: dict[str, tuple[str, str]]) -> None:
    """Write the status of a pod whose containers cannot start for want of their images: Pending."""
    status["phase"] = "Pending"
    for entry in status.get("containerStatuses", []):
        if entry["name"] in problems:
            reason, message = problems[entry["name"]]
            entry["state"] = {"waiting": {"reason": reason, "message": message}}
