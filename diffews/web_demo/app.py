# Copyright (c) DiffewS contributors. Licensed under the BSD 2-Clause License (see LICENSE).
"""The web demo's page (Gradio Blocks): a view over ``WebDemoSession``, with no model code.

Layout: up to five support slots (an image editor where the object is painted with the brush,
and an optional mask file that replaces the painting), the queries (uploaded images and/or a
folder on the server), one button, then the results (each query with its mask overlaid beside
the decoded prediction, score and time; a table; the zip of all masks) and the examples.

The button's event is also the app's API, ``api_name="segment"``; its parameters are
``support_1_image .. support_5_image`` (ImageEditor values), ``support_1_mask ..
support_5_mask`` (mask files), ``queries`` (image files) and ``folder`` (a path on the server).
"""

import logging
import os
from typing import List, Optional, Sequence, Tuple

import gradio as gr
from gradio.components.base import server
from gradio.utils import NamedString
from gradio_client.utils import is_valid_file

from ..cli import format_error
from ..predictor import SupportSetError
from ..utils.image import ImageReadError
from .access import exposure_warning
from .examples import DemoExample
from .inputs import MAX_SUPPORTS, NOT_AN_IMAGE, DemoInputError, InputLimits, open_checked
from .results import QueryResult
from .session import WebDemoSession

logger = logging.getLogger(__name__)

__all__ = ["build_demo", "launch_demo", "TABLE_HEADERS", "GRADIO_CACHE_SECONDS"]

TABLE_HEADERS = ["query", "size (WxH)", "foreground %", "score", "seconds", "found"]
HOW_TO = """\
**1.** For each support (1 to 5 tabs), upload an image and mark the object: paint it with the
brush, or upload a mask file (any image of the same size, non-zero = object).
**2.** Add query images (or a folder on the server). **3.** Press *Segment*.
The supports are encoded once and reused for every query, and again on later runs while they do
not change. Or click an example below.
"""
CSS = """
.gradio-container {max-width: 1400px !important}
#status {min-height: 3em}
#gallery .thumbnail-item {aspect-ratio: 2 / 1}
#gallery .grid-container {padding-top: 2.6em}
#gallery, #gallery .gallery-container, #gallery .grid-wrap {height: auto !important;
  max-height: none !important; min-height: 0 !important}
"""


MAX_PENDING_EDITS = 64  # editor uploads awaiting their run, kept by Gradio per component
GRADIO_CACHE_SECONDS = 3600  # the page's files in Gradio's cache folder are deleted after this


class SupportEditor(gr.ImageEditor):
    """``gr.ImageEditor`` (the same page component: ``is_template``) that checks its files against
    ``limits`` (pixels from the header, bytes) *before* Gradio decodes them, and whose refused or
    unreadable upload is a one-line message in the page instead of Gradio's preprocessing report.
    ``limits`` is set by ``build_demo`` after construction."""

    is_template = True  # no __init__ of its own: Gradio reads the props from its signature
    limits = InputLimits()

    def _slot(self) -> str:
        return (self.elem_id or "").replace("support_image_", "support ")

    def _check(self, payload) -> None:
        files = payload
        if getattr(payload, "id", None) is not None:  # the browser sent its canvas as blobs
            files = self.blob_storage.get(payload.id) or payload
        items = [("", getattr(files, "background", None))]
        items += [(" (painted layer)", x) for x in getattr(files, "layers", None) or []]
        items += [(" (composite)", getattr(files, "composite", None))]
        for part, item in items:
            if item is None:
                continue
            name = getattr(item, "orig_name", None) or "the upload"
            source = item if isinstance(item, (bytes, bytearray)) else getattr(item, "path", None)
            if source is None:
                continue
            if isinstance(source, bytearray):
                source = bytes(source)
            open_checked(source, f"{self._slot()}: {name}{part}", self.limits).close()

    def preprocess(self, payload):
        if payload is None:
            return None
        try:
            self._check(payload)
        except DemoInputError as e:
            if getattr(payload, "id", None) is not None:
                self.blob_storage.pop(payload.id, None)
            raise gr.Error(str(e), print_exception=False) from e
        try:
            return super().preprocess(payload)
        except OSError as e:  # PIL's UnidentifiedImageError and truncated files
            upload = getattr(getattr(payload, "background", None), "orig_name", None)
            raise gr.Error(f"{self._slot()}: {upload or 'the upload'}: {NOT_AN_IMAGE}",
                           print_exception=False) from e

    @server
    def accept_blobs(self, data):
        # Gradio keeps each pending canvas upload until its run; a client that never runs would
        # grow that store without end: the oldest pending uploads are dropped past the bound
        while len(self.blob_storage) >= MAX_PENDING_EDITS:
            self.blob_storage.pop(next(iter(self.blob_storage)))
        return super().accept_blobs(data)


# what each model is, under the page title
TAGLINES = {"DiffewS": "few-shot segmentation with a one-step diffusion UNet",
            "SINE": "in-context segmentation with a frozen DINOv2 and a Matching Transformer"}


class FilePaths(gr.File):
    """``gr.File(type="filepath")`` (the same page component: ``is_template``) without Gradio
    6.31's leak: its ``preprocess`` opens an empty ``NamedTemporaryFile`` in the cache folder for
    every file it passes on and never deletes it (two 0-byte files a run here, which
    ``delete_cache`` does not see either). The upload itself is in Gradio's cache already."""

    is_template = True

    def _process_single_file(self, f):
        if self.type != "filepath":
            return super()._process_single_file(f)
        if self.file_types and not is_valid_file(f.path, self.file_types):
            raise gr.Error(f"{f.orig_name or os.path.basename(f.path)}: not one of the accepted "
                           f"file types ({', '.join(self.file_types)})", print_exception=False)
        return NamedString(f.path)


# the "found" column: the predictor's decision, "—" when it made none (not a "yes")
FOUND = {True: "yes", False: "not found", None: "—"}


def _caption(r: QueryResult) -> str:
    found = "not found · " if r.present is False else ""
    return f"{found}score {r.score:.2f} · {r.seconds:.3f} s · {r.name}"


def build_demo(session: WebDemoSession, examples: Sequence[DemoExample] = (),
               description: str = "", cache_seconds: int = GRADIO_CACHE_SECONDS):
    """Build the page.

    Args:
        session: what the button runs (predictor, support-set cache, output folder).
        examples: shown under the results; clicking one fills the inputs and runs it.
        description: a Markdown line about the model (weights, working size, device).
        cache_seconds: how long Gradio keeps the page's files in its cache folder (uploads, the
            result pictures, copies of the zips; ``GRADIO_TEMP_DIR``, else ``/tmp/gradio``):
            Gradio's ``delete_cache`` deletes older ones every ``min(60, cache_seconds)``
            seconds, and all of them when the server stops. Without it they were never deleted.
    Returns:
        the ``gr.Blocks`` (not launched; see ``launch_demo``).
    """
    if cache_seconds < 1:
        raise ValueError(f"cache_seconds must be >= 1, got {cache_seconds}")
    def segment(support_1_image, support_2_image, support_3_image, support_4_image,
                support_5_image, support_1_mask, support_2_mask, support_3_mask, support_4_mask,
                support_5_mask, queries: Optional[List[str]], folder: Optional[str],
                progress=gr.Progress()):
        editors = [support_1_image, support_2_image, support_3_image, support_4_image,
                   support_5_image]
        masks = [support_1_mask, support_2_mask, support_3_mask, support_4_mask, support_5_mask]
        try:
            out = session.run(editors, masks, queries, folder,
                              progress=lambda done, n: progress((done, n), desc="queries"))
        except (DemoInputError, ImageReadError, SupportSetError, ValueError) as e:
            logger.warning("web demo input error: %s", e)
            raise gr.Error(str(e), print_exception=False) from e
        except Exception as e:  # noqa: BLE001 (the page shows it; the server keeps serving)
            logger.exception("web demo run failed")
            raise gr.Error(format_error(e), title="Error") from e
        gallery = [(r.panel, _caption(r)) for r in out.results]
        rows = [[r.name, f"{r.size[0]}x{r.size[1]}", round(100.0 * r.fraction, 1),
                 round(r.score, 3), round(r.seconds, 3), FOUND[r.present]]
                for r in out.results]
        return gallery, rows, out.status(), out.zip_path

    model = session.predictor.architecture or "DiffewS"
    delete_cache = (min(60, int(cache_seconds)), int(cache_seconds))
    with gr.Blocks(title=f"{model} web demo", analytics_enabled=False,
                   delete_cache=delete_cache) as demo:
        gr.Markdown(f"## {model}: {TAGLINES.get(model, 'few-shot segmentation')}")
        if description:
            gr.Markdown(description, elem_id="model_info")
        gr.Markdown(HOW_TO)
        editors, mask_files = [], []
        with gr.Row(equal_height=False):
            with gr.Column(scale=3):
                with gr.Tabs():
                    for i in range(1, MAX_SUPPORTS + 1):
                        with gr.Tab(f"Support {i}", elem_id=f"support_tab_{i}"):
                            editors.append(editor := SupportEditor(
                                label=f"Support {i}: image; paint the object with the brush",
                                type="numpy", image_mode="RGBA", sources=("upload", "clipboard"),
                                transforms=(), layers=False, height=340,
                                brush=gr.Brush(colors=[("#ff2020", 0.6)], color_mode="fixed"),
                                elem_id=f"support_image_{i}"))
                            editor.limits = session.limits
                            mask_files.append(FilePaths(
                                label=f"Support {i}: or a mask file (same size, non-zero = "
                                "object; replaces the painting)", file_types=["image"],
                                type="filepath", height=110, elem_id=f"support_mask_{i}"))
            with gr.Column(scale=2):
                queries = FilePaths(label="Query images", file_count="multiple",
                                  file_types=["image"], type="filepath", elem_id="queries")
                folder = gr.Textbox(label="and/or a folder of query images on the server "
                                    "(under the folders the server allows)",
                                    placeholder="/path/to/images", visible=session.allow_folders,
                                    elem_id="folder")
                run = gr.Button("Segment", variant="primary", elem_id="run")
                status = gr.Markdown("", elem_id="status")
        gallery = gr.Gallery(label="Each query with its predicted mask (red, outlined) | decoded "
                             "prediction", columns=3, height="auto", format="png",
                             object_fit="contain", elem_id="gallery")
        with gr.Row(equal_height=False):
            table = gr.Dataframe(headers=TABLE_HEADERS, interactive=False, scale=3,
                                 elem_id="table")
            zip_file = gr.File(label="All masks: zip of PNG (0/255, each query's size)",
                               interactive=False, scale=1, elem_id="masks_zip")
        inputs = [*editors, *mask_files, queries, folder]
        outputs = [gallery, table, status, zip_file]
        run.click(segment, inputs=inputs, outputs=outputs, api_name="segment")
        if examples:
            gr.Examples(
                examples=[_example_row(e) for e in examples], inputs=inputs, outputs=outputs,
                fn=segment, run_on_click=True, cache_examples=False,
                example_labels=[e.label for e in examples],
                label="Examples: synthetic shapes of classes the quick-start model never saw "
                      "in training (click one to run it)")
    return demo


def _example_row(e: DemoExample) -> list:
    images = [img for img, _ in e.supports] + [None] * (MAX_SUPPORTS - len(e.supports))
    masks = [m for _, m in e.supports] + [None] * (MAX_SUPPORTS - len(e.supports))
    return [*images, *masks, list(e.queries), ""]


def launch_demo(demo, host: str = "127.0.0.1", port: Optional[int] = None, share: bool = False,
                block: bool = True, allowed_paths: Sequence[str] = (),
                auth: Optional[Sequence[Tuple[str, str]]] = None,
                max_file_bytes: Optional[int] = InputLimits().max_file_bytes):
    """Queue (one run at a time: the model is shared) and serve the page.

    Args:
        host: interface to listen on ("127.0.0.1": this machine only; "0.0.0.0": the network,
            logged as a warning without ``auth``).
        port: TCP port (None: Gradio's default, 7860, or the next free one).
        share: also open a public gradio.live link (off by default; logged as a warning without
            ``auth``, whatever the host).
        block: wait until interrupted; False returns at once (tests, notebooks).
        allowed_paths: extra folders whose files the page may serve (the examples).
        auth: (user, password) pairs of Gradio's login page; None: no login.
        max_file_bytes: Gradio refuses a larger upload before it is written to disk.
    Returns:
        the page's local URL.
    """
    warning = exposure_warning(host, auth, share)
    if warning:
        logger.warning(warning)
    demo.queue(default_concurrency_limit=1)
    _, url, share_url = demo.launch(
        server_name=host, server_port=port, share=share, prevent_thread_lock=True,
        show_error=True, quiet=True, allowed_paths=[os.path.abspath(p) for p in allowed_paths],
        auth=list(auth) if auth else None, max_file_size=max_file_bytes,
        theme=gr.themes.Soft(), css=CSS)
    logger.info("web demo at %s%s", url, f" (public link {share_url})" if share_url else "")
    if block:
        demo.block_thread()
    return url
