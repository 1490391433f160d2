"""Start and stop: the model, its editors and the stored edits brought together, and what is saved so
that the next start is fast (the pack of tensors, the prompts' scope vectors)."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import torch

from app.core.config import Settings
from app.core.observability import Metrics
from app.services.editing import EditingService
from app.services.replica import LogFollower
from editors.backbone import Backbone, load_backbone
from editors.edited import EditedModel
from editors.method import Editor, Method
from editors.registry import METHODS
from editors.scope.index import ScopeIndex
from editors.scope.model import ScopeModel
from storage.models import ACTIVE, WITHDRAWN
from storage.repository import Repository

log = logging.getLogger(__name__)

PACK_AFTER_MISSES = 64  # blobs read one by one at start before a fresh pack is worth writing
# Where servers share the blob dir, a blob younger than this may be another server's change in flight.
SHARED_ORPHAN_AGE_S = 3600


def start(settings: Settings, metrics: Metrics | None = None) -> EditingService:
    """Load the model and the scope model, open every method's editor on this data dir, and load the
    stored edits."""
    if settings.torch_threads:
        torch.set_num_threads(settings.torch_threads)
    names = settings.methods or list(METHODS)
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"EDITSERVE_METHODS names unknown methods {unknown}; known: {sorted(METHODS)}")
    backbone = load_backbone_of(settings)
    repo = Repository(settings.data_dir, settings.database_url)
    try:
        state_lost: set[str] = set()

        def open_editor(name: str, method: Method, backbone: Backbone) -> Editor:
            editor, lost = _open_editor(name, method, backbone, settings, repo)
            if lost:
                state_lost.add(name)
            return editor

        with repo.change_lock():  # servers starting together on one database make the state once
            model = build_model(settings, names, backbone, open_editor)
        service = EditingService(settings, model, repo, metrics)
        service.packer = _restore(service, state_lost)
        if repo.shared:
            service.follower = LogFollower(service, settings.follow_poll_seconds).start()
    except BaseException:
        repo.close()
        raise
    return service


def load_backbone_of(settings: Settings) -> Backbone:
    """The backbone the settings name, on their device, in their dtype and quantisation."""
    device = torch.device(settings.device) if settings.device else None
    return load_backbone(settings.model, settings.cache_dir, device, settings.dtype, settings.quant)


def build_model(
    settings: Settings,
    names: list[str] | None = None,
    backbone: Backbone | None = None,
    open_editor: Callable[[str, Method, Backbone], Editor] | None = None,
) -> EditedModel:
    """The served model, as the server, the harness and the bench all build it: the backbone (loaded
    unless given), the scope model, and an editor for each method in `names` (default: every
    registered one), opened by `open_editor` (the server: from the data dir's saved state) or built
    afresh."""
    backbone = backbone or load_backbone_of(settings)
    # The scope model runs on EDITSERVE_DEVICE when it is set, else on the CPU (it is small).
    device = torch.device(settings.device) if settings.device else None
    scope = ScopeIndex(ScopeModel.load(settings.scope, settings.cache_dir, device))
    editors = {
        name: open_editor(name, METHODS[name], backbone)
        if open_editor is not None
        else METHODS[name].build(backbone, settings, None)
        for name in names or list(METHODS)
    }
    return EditedModel(backbone, editors, scope)


def _open_editor(
    name: str, method: Method, backbone: Backbone, settings: Settings, repo: Repository
) -> tuple[Editor, bool]:
    """Build a method's editor from the state saved on this data dir's first start (saving it now if
    this is that start). Returns the editor and whether saved state was lost."""
    fingerprint = method.fingerprint(backbone, settings)
    saved = repo.editor_state(name)
    if saved is not None and saved.fingerprint != fingerprint:
        if repo.list(method=name, limit=0)[1]:
            raise RuntimeError(
                f"{settings.data_dir} holds {name} edits made with {saved.fingerprint}, but this server runs "
                f"{fingerprint}; they would not fit. Restore those settings or use another EDITSERVE_DATA_DIR."
            )
        saved = None  # no edit depends on the old state: start afresh
    if saved is not None:
        try:
            return method.build(backbone, settings, repo.read_editor_state(saved)), False
        except Exception as exc:
            log.error("%s editor state %s cannot be read (%s); rebuilding it", name, saved.blob, exc)
    editor = method.build(backbone, settings, None)
    repo.save_editor_state(name, fingerprint, editor.state())
    return editor, saved is not None


def _restore(service: EditingService, state_lost: set[str]) -> threading.Thread | None:
    """Put every stored edit back: active ones acting; the withdrawn ones' prompts, so that they keep
    the unedited answer. Tensors come from the pack where it is current; when many had to be read blob
    by blob, a fresh pack is written in the background (the thread returned)."""
    repo, model = service.repo, service.model
    service.applied = repo.log_head()  # read first: a change committed during the load is applied after
    rows = [r for r in repo.to_load() if _restorable(service, r, state_lost)]
    active = [r for r in rows if r.status == ACTIVE]
    tensors, misses = repo.read_many(active)
    errors = {rid: t for rid, t in tensors.items() if isinstance(t, Exception)}
    readable = {rid: t for rid, t in tensors.items() if not isinstance(t, Exception)}
    withdrawn = sorted((r for r in rows if r.status == WITHDRAWN), key=lambda r: r.withdrawn_at or r.created_at)
    failed, embedded = model.load(
        [(r.id, r.method, r.prompt, r.target, readable[r.id], r.blob) for r in active if r.id in readable],
        [(r.id, r.method, r.prompt) for r in withdrawn],
        repo.read_scope_vectors(model.scope.model.fingerprint),
        {r.id: r.subject for r in rows if r.subject},
        {r.id: tuple(r.aliases) for r in rows if r.aliases},
    )
    errors.update(failed)
    if embedded >= PACK_AFTER_MISSES:  # embedding 10,000 prompts takes a minute: keep them
        _write_scope_vectors(service)
    for record in active:
        exc = errors.get(record.id)
        if exc is not None:
            tensors[record.id] = exc  # kept out of the pack
            missing = isinstance(exc, FileNotFoundError)
            _mark_corrupt(repo, record, f"blob {record.blob} is " + ("missing" if missing else f"unreadable: {exc}"))
    for name in repo.remove_orphans(SHARED_ORPHAN_AGE_S if repo.shared else 0):
        log.warning("removed orphan blob %s (no edit refers to it)", name)
    log.info("loaded %d active edits (%d blobs read one by one)", service.edits_active, misses)
    if misses < PACK_AFTER_MISSES:
        return None
    packer = threading.Thread(target=_write_pack, args=(repo, active, tensors), daemon=True, name="editserve-pack")
    packer.start()
    return packer


def _restorable(service: EditingService, record, state_lost: set[str]) -> bool:
    if record.method not in service.model.editors:
        log.warning("edit %s: method %r is not served (EDITSERVE_METHODS); left as it is", record.id, record.method)
        return False
    if record.method in state_lost:
        why = f"the {record.method} editor state it was made against is lost"
        if record.status == ACTIVE:
            _mark_corrupt(service.repo, record, why)
        elif record.error is None:
            service.repo.note_error(record.id, why)
        return False
    return True


def _mark_corrupt(repo: Repository, record, error: str) -> None:
    log.error(
        "edit %s (%s, prompt %r) is corrupt: %s; its record is kept, PUT /edits/%s rebuilds it",
        *(record.id, record.method, record.prompt, error, record.id),
    )
    repo.mark_corrupt(record.id, error)


def stop(service: EditingService) -> None:
    """Stop following, refresh the pack if many blobs changed since start (so that the next start stays
    fast), and close the editors and the store."""
    if service.follower is not None:
        service.follower.stop()
    if service.packer is not None:
        service.packer.join()
    if service.blobs_written >= PACK_AFTER_MISSES:
        refresh_caches(service)
    service.model.close()  # the batch engine ends before the editors take their hooks out
    for editor in service.model.editors.values():
        editor.close()
    service.repo.close()


def refresh_caches(service: EditingService) -> None:
    """A fresh pack and scope vectors for the active edits, made while no change runs (so that a
    backup or the next start finds them whole and current)."""
    with service.writes:
        records = [r for r in service.repo.to_load() if r.status == ACTIVE]
        _write_pack(service.repo, records, service.repo.read_many(records)[0])
        _write_scope_vectors(service)
        service.blobs_written = 0


def refresh_caches_soon(service: EditingService) -> None:
    """refresh_caches() in the background; stop() waits for it."""
    if service.packer is not None:
        service.packer.join()
    service.packer = threading.Thread(target=refresh_caches, args=(service,), daemon=True, name="editserve-pack")
    service.packer.start()


def _write_pack(repo: Repository, records: list, tensors: dict) -> None:
    try:
        repo.write_pack(records, tensors)
    except Exception:  # noqa: BLE001 - the pack only saves time at the next start
        log.exception("writing the pack failed; the next start reads the blobs one by one")


def _write_scope_vectors(service: EditingService) -> None:
    scope = service.model.scope
    try:
        service.repo.write_scope_vectors(scope.model.fingerprint, scope.vectors())
    except Exception:  # noqa: BLE001 - the vectors only save time at the next start
        log.exception("saving the scope vectors failed; the next start embeds every prompt")
