"""The HTTP service: every endpoint and error, real images, in-memory uploads, concurrency."""

from __future__ import annotations

import base64
import io
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image
from test_loader import dicom_bytes, png_bomb

from pneumonia_cxr.data.discovery import list_images
from pneumonia_cxr.inference.predictor import Predictor
from pneumonia_cxr.predict import predict_paths
from pneumonia_cxr.serve.app import create_app
from pneumonia_cxr.serve.service import ServeConfig

LIMIT = 2 * 1024 * 1024


@pytest.fixture(scope="module")
def model_file(session_tiny_model: Path) -> Path:
    return session_tiny_model


@pytest.fixture(scope="module")
def xray(tiny_synthetic: Path) -> Path:
    """A real Kermany JPEG where the shared data is present, else a synthetic PNG."""
    import os

    real = os.environ.get("PNEUMONIA_CXR_DATA")
    if real and Path(real).is_dir():
        return sorted((Path(real) / "test" / "PNEUMONIA").glob("*.jpeg"))[0]
    return list_images(tiny_synthetic, ["test"])[0].path


@pytest.fixture(scope="module")
def own_image(tiny_synthetic: Path) -> Path:
    """A synthetic test image: what the tiny test model was made for, so it is assessed (a
    real film is "not assessed" by it: its guard knows it never saw one)."""
    return list_images(tiny_synthetic, ["test"])[0].path


def _wait_ready(client: TestClient) -> None:
    deadline = time.monotonic() + 60
    while client.get("/ready").status_code != 200:
        assert time.monotonic() < deadline, client.get("/ready").json()
        time.sleep(0.1)


@pytest.fixture(scope="module")
def client(model_file: Path):
    app = create_app(ServeConfig(model_path=model_file, max_upload_bytes=LIMIT, device="cpu"))
    with TestClient(app) as client:
        _wait_ready(client)
        yield client


def _upload(client: TestClient, *files: tuple[str, bytes], query: str = ""):
    return client.post(f"/v1/predict{query}", files=[("file", f) for f in files])


def test_health_ready_model_and_docs(client: TestClient, model_file: Path) -> None:
    assert client.get("/health").json() == {"status": "ok"}
    assert client.get("/ready").json()["ready"] is True
    info = client.get("/v1/model").json()
    assert info["model_path"] == str(model_file) and info["classes"] == ["NORMAL", "PNEUMONIA"]
    assert 0 < info["threshold"] < 1 and info["preprocessing"]["image_size"] == 48
    assert info["type"] is None and "Trained and tested on" in info["scope"]
    assert info["intended_use"]["max_age_years"] == 10
    assert client.get("/docs").status_code == 200
    assert "/v1/predict" in client.get("/openapi.json").json()["paths"]


def test_probability_equals_the_predict_command(
    client: TestClient, model_file: Path, own_image: Path
) -> None:
    response = _upload(client, (own_image.name, own_image.read_bytes()))
    assert response.status_code == 200
    [result] = response.json()["results"]
    [row] = predict_paths(Predictor.open(model_file, device="cpu"), [own_image])  # its default
    assert result["probability"] == pytest.approx(row.probability, abs=1e-4)
    threshold = Predictor.open(model_file, device="cpu").threshold
    assert result["label"] == row.label and result["threshold"] == pytest.approx(threshold)
    assert result["state"] == row.state == "assessed" and result["reasons"] == []


def test_several_files_with_one_bad_and_gradcam(client: TestClient, own_image: Path) -> None:
    data = own_image.read_bytes()
    files = [(own_image.name, data), ("notes.txt", b"hello"), ("b.png", data)]
    response = _upload(client, *files, query="?gradcam=true")
    assert response.status_code == 200
    good, bad, third = response.json()["results"]
    assert bad["name"] == "notes.txt" and bad["state"] == "unreadable"
    assert "not JPEG, PNG or DICOM" in bad["error"] and "Error" not in bad["error"]
    overlay = Image.open(io.BytesIO(base64.b64decode(good["gradcam_png_base64"])))
    assert overlay.mode == "RGB" and max(overlay.size) <= 768
    assert third["probability"] == pytest.approx(good["probability"])


def _truncated_jpeg(xray: Path) -> bytes:
    buffer = io.BytesIO()
    Image.open(xray).convert("L").save(buffer, format="JPEG")
    return buffer.getvalue()[:-600]


BAD_UPLOADS = {
    "text": (("notes.jpeg", b"this is not an image"), 415, "not JPEG, PNG or DICOM"),
    "empty": (("empty.png", b""), 422, "empty (0 bytes)"),
    "bomb": (("bomb.png", png_bomb()), 413, "exceeds the limit"),
    "dicom without pixels": (
        ("x.dcm", dicom_bytes(np.zeros((4, 4), np.uint16), with_pixels=False)),
        422,
        "no PixelData",
    ),
}


@pytest.mark.parametrize("kind", sorted(BAD_UPLOADS))
def test_bad_uploads_get_a_json_4xx_and_the_server_stays_up(client: TestClient, kind: str) -> None:
    upload, status, error = BAD_UPLOADS[kind]
    started = time.monotonic()
    response = _upload(client, upload)
    assert time.monotonic() - started < 10
    assert response.status_code == status
    body = response.json()
    assert body["error"] == "unreadable image" and upload[0] in body["detail"]
    assert error in body["detail"] and "Error:" not in body["detail"]
    assert client.get("/health").status_code == 200


def test_truncated_jpeg_is_refused(client: TestClient, xray: Path) -> None:
    response = _upload(client, ("cut.jpeg", _truncated_jpeg(xray)))
    assert response.status_code == 422 and "truncated" in response.json()["detail"].lower()


def test_request_errors_no_file_not_multipart_too_large(client: TestClient) -> None:
    no_file = client.post("/v1/predict", data={"other": "x"})
    assert no_file.status_code == 400 and no_file.json()["error"] == "no file"
    not_multipart = client.post(
        "/v1/predict", content=b"raw", headers={"content-type": "image/png"}
    )
    assert not_multipart.status_code == 400
    too_large = _upload(client, ("big.png", b"\0" * (LIMIT + 1)))
    assert too_large.status_code == 413 and "limit" in too_large.json()["detail"]
    assert client.get("/health").status_code == 200


def test_uploads_never_touch_the_disk(
    client: TestClient, xray: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_disk(self) -> None:
        raise AssertionError("an upload was spooled to a temporary file")

    monkeypatch.setattr(tempfile.SpooledTemporaryFile, "rollover", no_disk)
    gray = np.asarray(Image.open(xray).convert("L").resize((1200, 1200)), dtype=np.int16)
    noise = np.random.default_rng(0).integers(-20, 21, gray.shape)
    buffer = io.BytesIO()  # noisy, so about 1.4 MB: above Starlette's 1 MB spool default
    Image.fromarray(np.clip(gray + noise, 0, 255).astype(np.uint8)).save(buffer, format="PNG")
    assert 1024 * 1024 < len(buffer.getvalue()) < LIMIT
    assert _upload(client, ("large.png", buffer.getvalue())).status_code == 200


def test_32_concurrent_uploads_all_succeed(client: TestClient, xray: Path) -> None:
    data = xray.read_bytes()
    with ThreadPoolExecutor(max_workers=32) as pool:
        statuses = list(
            pool.map(lambda i: _upload(client, (f"{i}.jpeg", data)).status_code, range(32))
        )
    assert statuses == [200] * 32


def test_busy_and_not_ready(client: TestClient, tmp_path: Path) -> None:
    service = client.app.state.service
    service._in_flight = service.config.max_in_flight
    try:
        busy = _upload(client, ("a.png", b"x"))
    finally:
        service._in_flight = 0
    assert busy.status_code == 503 and busy.json()["error"] == "busy"
    app = create_app(ServeConfig(model_path=tmp_path / "missing.pt"))
    with TestClient(app) as broken:
        deadline = time.monotonic() + 30
        while not app.state.service.load_error and time.monotonic() < deadline:
            time.sleep(0.05)
        assert broken.get("/health").status_code == 200
        ready = broken.get("/ready")
        assert ready.status_code == 503 and "missing.pt" in ready.json()["detail"]
        assert broken.post("/v1/predict", files=[("file", ("a.png", b"x"))]).status_code == 503


def test_the_page_is_self_contained(client: TestClient) -> None:
    page = client.get("/")
    assert page.status_code == 200 and '<input id="file" type="file"' in page.text
    assert "not a medical device" in page.text
    for asset in ("/static/app.js", "/static/style.css"):
        assert client.get(asset).status_code == 200
    for text in (
        page.text,
        client.get("/static/app.js").text,
        client.get("/static/style.css").text,
    ):
        assert "http://" not in text and "https://" not in text and "//cdn" not in text


def test_off_loopback_needs_a_token() -> None:
    from pneumonia_cxr.serve.app import check_exposure

    for host in ("127.0.0.1", "localhost", "::1"):
        check_exposure(host, None)
    with pytest.raises(PermissionError, match="PNEUMONIA_CXR_API_TOKEN.*reverse proxy"):
        check_exposure("0.0.0.0", None)
    check_exposure("0.0.0.0", "token")


def test_serve_command_refuses_the_network_without_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    from pneumonia_cxr.cli import main

    monkeypatch.delenv("PNEUMONIA_CXR_API_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    assert "access token" in capsys.readouterr().err


def test_with_a_token_every_route_but_health_and_the_page_needs_it(
    model_file: Path, xray: Path
) -> None:
    config = ServeConfig(model_path=model_file, device="cpu", api_token="t0ken")
    with TestClient(create_app(config)) as client:
        good = {"Authorization": "Bearer t0ken"}
        deadline = time.monotonic() + 60
        while client.get("/ready", headers=good).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert client.get("/health").status_code == 200
        assert client.get("/").status_code == 200  # the page, which asks for the token
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "t0ken"}):
            for method, path in (("get", "/ready"), ("get", "/v1/model"), ("get", "/docs")):
                response = getattr(client, method)(path, headers=headers)
                assert response.status_code == 401 and response.json()["error"] == "unauthorized"
            upload = client.post(
                "/v1/predict", files=[("file", (xray.name, xray.read_bytes()))], headers=headers
            )
            assert upload.status_code == 401 and "results" not in upload.json()
        assert client.get("/health").status_code == 200  # still up
        assert client.get("/v1/model", headers=good).status_code == 200
        response = client.post(
            "/v1/predict", files=[("file", (xray.name, xray.read_bytes()))], headers=good
        )
        assert response.status_code == 200


def test_a_calibrated_model_says_so_and_shows_no_parent_test_figures(
    model_file: Path, tmp_path: Path
) -> None:
    from pneumonia_cxr.model.model_file import load_model, save_model

    bundle = load_model(model_file)
    bundle.extra["calibration"] = {
        "images": {"NORMAL": 40, "PNEUMONIA": 60},
        "date": "2026-11-30T00:00:00+00:00",
        "threshold_rule": "max_specificity_at_sensitivity",
        "min_sensitivity": 0.95,
    }
    calibrated = save_model(bundle, tmp_path / "site.pt")
    (tmp_path / "eval_test").mkdir()
    parent_metrics = model_file.parent / "eval_test" / "metrics.json"
    (tmp_path / "eval_test" / "metrics.json").write_text(
        parent_metrics.read_text() if parent_metrics.is_file() else "{}"
    )
    with TestClient(create_app(ServeConfig(model_path=calibrated, device="cpu"))) as client:
        _wait_ready(client)
        info = client.get("/v1/model").json()
    assert info["calibration_line"].startswith("calibrated on 100 local images")
    assert info["calibration"]["images"] == {"NORMAL": 40, "PNEUMONIA": 60}
    assert info["test_metrics"] is None


def test_an_onnx_model_answers_without_overlays(
    model_file: Path, own_image: Path, tmp_path: Path
) -> None:
    from pneumonia_cxr.export import export_onnx
    from pneumonia_cxr.model.model_file import load_model

    onnx = export_onnx(load_model(model_file), tmp_path / "model.onnx")
    with TestClient(create_app(ServeConfig(model_path=onnx, device="cpu"))) as client:
        _wait_ready(client)
        response = _upload(client, (own_image.name, own_image.read_bytes()), query="?gradcam=true")
    assert response.status_code == 200
    [result] = response.json()["results"]
    assert result["state"] == "assessed" and 0.0 <= result["probability"] <= 1.0
    assert "gradcam_png_base64" not in result
