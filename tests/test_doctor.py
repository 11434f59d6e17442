"""`persona doctor`'s rows."""

from persona.doctor import report


def test_doctor_reports_threads_and_the_openmp_waits(monkeypatch) -> None:
    monkeypatch.setenv("GOMP_SPINCOUNT", "1234")
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    rows = dict(report())
    assert "GOMP_SPINCOUNT=1234" in rows["cpu threads"]
    assert "OMP_WAIT_POLICY=unset" in rows["cpu threads"]
    assert "torch threads" in rows["cpu threads"]
