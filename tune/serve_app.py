"""The Ray Serve deployment of tune.serve: one classifier replica, its HTTP routes and its page.

    GET  /                      the page: choose or drop a photo, see its top-5 classes with bars
    POST /predict?top_k=5       the request body is the image's bytes (curl --data-binary @photo.jpg);
                                answers {"predictions": [{"class", "index", "probability"}, ...], "batch": n}
    GET  /info                  {"classes": [...], "models": [{"model", "image_size"}], "tta": bool, "source": {...}}

An image is decoded and predicted by dogs.classifier.Predictor, as tune.best --predict does: load_rgb, the
function that decoded the training images, then predict_probs, the function that scores Validation and makes
the submission. Concurrent requests are predicted together (serve.batch; "batch" says with how many). A body
that is not an image is a 400, one over the upload limit a 413, each with {"error": one line}; a client that
disconnects mid-upload is one line in the log.
"""
import logging
from pathlib import Path
from urllib.parse import parse_qs

from ray import serve
from starlette.requests import ClientDisconnect
from starlette.responses import HTMLResponse, JSONResponse

from dogs.classifier import Predictor
from dogs.models import build_model

PAGE = Path(__file__).with_name("serve_page.html")
PAGE_TOP_K = 5   # the page, and /predict without ?top_k, show this many classes (or all, when there are fewer)
CLIENT_GONE = 499   # nginx's "client closed request": the status of an answer nobody is left to read
log = logging.getLogger("ray.serve")   # the replica's log, which tune.serve's console shows


class HTTPError(Exception):
    """A request we cannot answer: its status and one line saying why."""

    def __init__(self, status, reason):
        super().__init__(reason)
        self.status = status


@serve.deployment(name="classifier")
class Classifier:
    """The model of a checkpoint (or the ensemble of several), each whole (its frozen prefix included), as a
    dogs.classifier.Predictor on this replica's device (a GPU when the replica was given a share of one).

    `members`: [(state_dict, config)]; `tta`: each prediction averaged with the mirror image's."""

    def __init__(self, members, classes, source, max_batch_size=16, batch_wait_s=0.01, max_upload_bytes=20 << 20,
                 tta=False):
        self.classes, self.source = list(classes), source
        models = []
        for weights, config in members:
            model = build_model(config, len(self.classes), load_weights=False)
            model.load_state_dict(weights)
            models.append((model, {"config": config, "classes": self.classes}))
        self.predictor = Predictor(models, tta=tta)
        self.max_batch_size, self.max_upload_bytes = max_batch_size, max_upload_bytes
        self.predict_batch.set_max_batch_size(max_batch_size)
        self.predict_batch.set_batch_wait_timeout_s(batch_wait_s)
        self.page = PAGE.read_text().replace("__TOP_K__", str(min(PAGE_TOP_K, len(self.classes))))

    async def __call__(self, request):
        try:
            # route: the page, the model's description, or a prediction
            path, method = "/" + request.url.path.strip("/"), request.method
            if path == "/" and method == "GET":
                return HTMLResponse(self.page)
            if path == "/info" and method == "GET":
                return JSONResponse({"classes": self.classes, "tta": self.predictor.tta, "source": self.source,
                                     "models": [{"model": c["config"]["model"], "image_size": c["config"]["image_size"]}
                                                for _, c in self.predictor.members]})
            if path == "/predict" and method == "POST":
                return JSONResponse(await self.predict(request))
            raise HTTPError(404, f"{method} {path}: no such route (GET /, GET /info, POST /predict?top_k=5 with "
                                 "the image's bytes as the body)")
        except HTTPError as err:
            return JSONResponse({"error": str(err)}, status_code=err.status)

    async def predict(self, request):
        """The top-k classes of the image in the request's body."""
        top_k = self.top_k(request.url.query)
        image = self.decode(await self.read_body(request))
        # one image alone, or gathered with the requests that arrive meanwhile (serve.batch)
        if self.max_batch_size == 1:
            probs, batch = self.predictor.probs([image])[0], 1
        else:
            probs, batch = await self.predict_batch(image)
        [top] = self.predictor.top_k(probs[None], top_k)
        return {"predictions": [{"class": name, "index": index, "probability": probability}
                                for name, index, probability in top], "batch": batch}

    def decode(self, body):
        """The uploaded image as training decoded its files (dogs.data.load_rgb), or a 400 saying why it cannot be."""
        try:
            return self.predictor.decode(body)
        except Exception as err:   # what the image cache skips as corrupt: not an image, truncated, a bad header
            reason = str(err).splitlines()[0] if str(err) else "unreadable"
            raise HTTPError(400, f"not an image that can be decoded ({type(err).__name__}: {reason[:200]})") from None

    def top_k(self, query):
        """?top_k=N, 1 to the number of classes; without it, 5 (or all classes, when there are fewer)."""
        values = parse_qs(query).get("top_k", [str(min(PAGE_TOP_K, len(self.classes)))])
        try:
            top_k = int(values[-1])
        except ValueError:
            top_k = 0
        if not 1 <= top_k <= len(self.classes):
            raise HTTPError(400, f"top_k={values[-1]}: give a whole number from 1 to {len(self.classes)} (the "
                                 "model's classes)")
        return top_k

    async def read_body(self, request):
        """The request's body, refused (413) as soon as it is over the limit: by its Content-Length, or while it
        streams in (a chunked upload has none)."""
        limit = self.max_upload_bytes
        too_big = HTTPError(413, f"the upload is over the limit of {limit / 2**20:g} MB (tune.serve --max-upload-mb)")
        kind = request.headers.get("content-type", "").lower()
        if kind.startswith("multipart/"):
            raise HTTPError(400, "send the image's bytes as the request body (curl --data-binary @photo.jpg), not "
                                 "a form (curl -F)")
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            raise too_big
        body = bytearray()
        try:
            async for chunk in request.stream():
                body += chunk
                if len(body) > limit:
                    raise too_big
        except ClientDisconnect:   # one line in the console, not Serve's two tracebacks: nobody waits for an answer
            log.warning("POST /predict: the client disconnected after %d byte(s) of its upload; nothing to answer",
                        len(body))
            raise HTTPError(CLIENT_GONE, "the client disconnected mid-upload") from None
        if not body:
            raise HTTPError(400, "the request body is empty: send the image's bytes (curl --data-binary @photo.jpg)")
        return bytes(body)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.01)
    async def predict_batch(self, images):
        """(probabilities, batch size) of each image, all predicted at once."""
        return [(probs, len(images)) for probs in self.predictor.probs(images)]


def app(members, classes, source, replicas=1, gpus=0.0, cpus=1.0, max_batch_size=16, batch_wait_s=0.01,
        max_upload_bytes=20 << 20, tta=False):
    """The Serve application: `replicas` copies of the Classifier of `members` [(state_dict, config)], each on
    `gpus` of a GPU and `cpus` CPUs."""
    return Classifier.options(
        num_replicas=replicas,
        ray_actor_options={"num_gpus": gpus, "num_cpus": cpus},
        max_ongoing_requests=max(2 * max_batch_size, 8),
    ).bind(members, classes, source, max_batch_size, batch_wait_s, max_upload_bytes, tta)
