"""Throwaway X.509 material for the TLS tests, made with the `openssl` command line in a temp folder.

`Pki(folder)` makes a CA; `pki.issue(name, sans)` a certificate and key signed by it (PEM files, the key
unencrypted), `expired=True` one whose validity ended in 2020. Every file is written under `folder`.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path


def _openssl(*args: str, cwd: Path) -> None:
    binary = shutil.which("openssl")
    if binary is None:
        raise RuntimeError("openssl is not installed (apt-get install openssl)")
    done = subprocess.run([binary, *args], cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"openssl {' '.join(args[:2])} failed: {done.stderr[-1000:]}")


@dataclass(frozen=True)
class Issued:
    cert: Path
    key: Path

    def bundle(self, path: Path) -> Path:
        """Certificate and key in one PEM file (what baresip's sip_certificate takes)."""
        path.write_text(self.cert.read_text() + self.key.read_text())
        return path


class Pki:
    def __init__(self, folder: Path, name: str = "telgate test CA") -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.ca = folder / "ca.pem"
        self.ca_key = folder / "ca.key"
        _openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(self.ca_key), "-out", str(self.ca), "-days", "2", "-subj", f"/CN={name}",
            "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
            cwd=folder,
        )  # fmt: skip
        self._serial = 1

    def issue(self, name: str, sans: str = "IP:127.0.0.1", expired: bool = False) -> Issued:
        """A leaf certificate for `sans` (e.g. "IP:127.0.0.1,DNS:pbx.test"), serverAuth and clientAuth."""
        key, csr, cert = (self.folder / f"{name}{ext}" for ext in (".key", ".csr", ".pem"))
        _openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
            "-keyout", str(key), "-out", str(csr), "-subj", f"/CN={name}",
            cwd=self.folder,
        )  # fmt: skip
        ext = self.folder / f"{name}.ext"
        ext.write_text(
            f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth,clientAuth\n"
        )
        self._serial += 1
        if expired:  # `openssl ca` is the one 3.0 command that takes explicit start and end dates
            db = self.folder / f"{name}.db"
            db.write_text("")
            conf = self.folder / f"{name}.cnf"
            conf.write_text(
                "[ca]\ndefault_ca = test\n[test]\n"
                f"database = {db}\nnew_certs_dir = {self.folder}\ncertificate = {self.ca}\n"
                f"private_key = {self.ca_key}\nserial = {self.folder / f'{name}.serial'}\n"
                "default_md = sha256\npolicy = anything\nunique_subject = no\ncopy_extensions = none\n"
                "[anything]\ncommonName = supplied\n"
            )
            (self.folder / f"{name}.serial").write_text(f"{self._serial:04X}\n")
            _openssl(
                "ca", "-batch", "-config", str(conf), "-in", str(csr), "-out", str(cert), "-notext",
                "-startdate", "20200101000000Z", "-enddate", "20200201000000Z", "-extfile", str(ext),
                cwd=self.folder,
            )  # fmt: skip
        else:
            _openssl(
                "x509", "-req", "-in", str(csr), "-CA", str(self.ca), "-CAkey", str(self.ca_key),
                "-set_serial", str(self._serial), "-days", "2", "-out", str(cert), "-extfile", str(ext),
                cwd=self.folder,
            )  # fmt: skip
        return Issued(cert, key)
