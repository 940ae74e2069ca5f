"""The pod sandbox image of the real test node: an OCI archive holding only a static `pause`.

    python tests/support/pause_image.py PAUSE_BINARY OUT.tar NAME:TAG   (node.py calls write())

containerd's CRI starts every pod (host-network ones too) in a sandbox container made from
its "sandbox" image, by default registry.k8s.io/pause, which cannot be pulled here (no
registry). This makes that image from k8s.io/kubernetes's own pause.c (compiled by tests/node/build.sh)
with the standard library alone: one layer (/pause, 0755, root, mtime 0), a config with
Entrypoint ["/pause"] and User 65535:65535 (as the upstream image), an OCI layout tar whose
index names the image (`io.containerd.image.name`), for `ctr -n k8s.io images import`.
The output is byte-for-byte reproducible for the same binary and name.
"""

from __future__ import annotations

import hashlib
import io
import json
import sys
import tarfile
from pathlib import Path


def _tar(members: dict[str, tuple[bytes, int]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, (data, mode) in members.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), mode, 0
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _descriptor(media_type: str, data: bytes) -> dict[str, object]:
    return {
        "mediaType": media_type,
        "digest": "sha256:" + hashlib.sha256(data).hexdigest(),
        "size": len(data),
    }


def write(binary: Path, out: Path, name: str) -> Path:
    """Write the image of `binary`, named `name`, to the OCI archive `out`."""
    layer = _tar({"pause": (binary.read_bytes(), 0o755)})
    layer_digest = "sha256:" + hashlib.sha256(layer).hexdigest()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": ["/pause"], "User": "65535:65535", "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
            "history": [{"created_by": "downloader tests: k8s.io/kubernetes build/pause/linux/pause.c"}],
        },
        sort_keys=True,
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": _descriptor("application/vnd.oci.image.config.v1+json", config),
            "layers": [_descriptor("application/vnd.oci.image.layer.v1.tar", layer)],
        },
        sort_keys=True,
    ).encode()
    tag = name.rsplit(":", 1)[1] if ":" in name.rsplit("/", 1)[-1] else "latest"
    index = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [
                {
                    **_descriptor("application/vnd.oci.image.manifest.v1+json", manifest),
                    "platform": {"architecture": "amd64", "os": "linux"},
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": tag,
                    },
                }
            ],
        },
        sort_keys=True,
    ).encode()
    blobs = {f"blobs/sha256/{hashlib.sha256(b).hexdigest()}": (b, 0o644) for b in (layer, config, manifest)}
    archive = _tar(
        {"oci-layout": (b'{"imageLayoutVersion":"1.0.0"}', 0o644), "index.json": (index, 0o644), **blobs}
    )
    tmp = out.with_name(out.name + ".partial")
    tmp.write_bytes(archive)
    tmp.replace(out)
    return out


def main(argv: list[str]) -> int:
    if len(argv) != 4:
        print(__doc__, file=sys.stderr)
        return 2
    write(Path(argv[1]), Path(argv[2]), argv[3])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
