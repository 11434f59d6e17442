"""`persona demo`: the main job on the embedded default (grows issue by issue)."""

from __future__ import annotations

from persona.doctor import main as doctor_main


def main(argv: list[str]) -> int:
    print("PERSONA demo: environment check (the end-to-end fit is being built)")
    return doctor_main([])
