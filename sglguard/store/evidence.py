"""Rows of evidence and proof: diagnostics bundles of incidents, and drill reports."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, Float, Integer, LargeBinary, String, Text, select
from sqlalchemy.orm import Mapped, Session, mapped_column

from sglguard.store.models import Base, Id, UTCDateTime


class DiagnosticRow(Base):
    """One diagnostics bundle: gzip-compressed JSON, with a summary for messages."""

    __tablename__ = "diagnostics"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    incident_id: Mapped[int | None] = mapped_column(Id, index=True)
    target: Mapped[str] = mapped_column(String(128))
    stage: Mapped[str] = mapped_column(String(64))  # "incident opened", "before restart"
    captured_at: Mapped[datetime] = mapped_column(UTCDateTime)
    took_ms: Mapped[float] = mapped_column(Float)
    size: Mapped[int] = mapped_column(Integer)  # bytes of JSON before compression
    summary: Mapped[str] = mapped_column(Text)
    data: Mapped[bytes] = mapped_column(LargeBinary)


class DrillReportRow(Base):
    """One `sglguard drill` run: its report as JSON."""

    __tablename__ = "drill_reports"

    id: Mapped[int] = mapped_column(Id, primary_key=True, autoincrement=True)
    target: Mapped[str] = mapped_column(String(128))
    started_at: Mapped[datetime] = mapped_column(UTCDateTime)
    finished_at: Mapped[datetime] = mapped_column(UTCDateTime)
    passed: Mapped[bool] = mapped_column(Boolean)
    report: Mapped[str] = mapped_column(Text)


def bundles_of(session: Session, incident_id: int) -> list[DiagnosticRow]:
    """The incident's bundles, oldest first."""
    return list(session.scalars(select(DiagnosticRow).where(
        DiagnosticRow.incident_id == incident_id).order_by(DiagnosticRow.id)).all())


def drill_reports(session: Session, limit: int = 20) -> list[DrillReportRow]:
    return list(session.scalars(select(DrillReportRow).order_by(
        DrillReportRow.id.desc()).limit(limit)).all())
