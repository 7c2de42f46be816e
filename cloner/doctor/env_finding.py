"""What ``gilclone doctor --env`` reports: a Finding about the files of one package."""

from dataclasses import dataclass
from typing import Tuple

from gilclone.cloner.doctor.findings import Finding


@dataclass(frozen=True)
class EnvFinding(Finding):
    """A Finding naming the package (distribution) and the files it is about."""

    package: str = ""
    files: Tuple[str, ...] = ()

    def to_json(self) -> dict:
        return dict(super().to_json(), package=self.package, files=list(self.files))
