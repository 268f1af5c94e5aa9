"""The worklist's table: one row per analysed image (engine.workflows.batch_record.BatchRow), and the proxy
that sorts it (outside what the model was made for first, then flagged, least confident first by
default) and filters it by text or flag."""

from __future__ import annotations

from PySide6.QtCore import QAbstractTableModel, QModelIndex, QSortFilterProxyModel, Qt
from PySide6.QtGui import QColor

SORT_ROLE = Qt.ItemDataRole.UserRole + 1
COLUMNS = ("Patient", "Study", "Image", "Predicted", "Probability", "Confidence", "Outside", "Flagged")
FLAGGED_COLUMN = COLUMNS.index("Flagged")
OUTSIDE_COLUMN = COLUMNS.index("Outside")
TEXT_COLUMNS = (0, 1, 2, 3)


class WorklistModel(QAbstractTableModel):
    def __init__(self, parent=None):
        super().__init__(parent)
        self.rows: list = []  # engine.workflows.batch_record.BatchRow

    def set_rows(self, rows) -> None:
        self.beginResetModel()
        self.rows = list(rows)
        self.endResetModel()

    def append_rows(self, rows) -> None:
        if rows:
            self.beginInsertRows(QModelIndex(), len(self.rows), len(self.rows) + len(rows) - 1)
            self.rows.extend(rows)
            self.endInsertRows()

    def rowCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(self.rows)

    def columnCount(self, parent=QModelIndex()) -> int:
        return 0 if parent.isValid() else len(COLUMNS)

    def headerData(self, section, orientation, role=Qt.ItemDataRole.DisplayRole):
        if role == Qt.ItemDataRole.DisplayRole and orientation == Qt.Orientation.Horizontal:
            return COLUMNS[section]
        return None

    def data(self, index, role=Qt.ItemDataRole.DisplayRole):
        if not index.isValid():
            return None
        row, column = self.rows[index.row()], index.column()
        if role == Qt.ItemDataRole.DisplayRole:
            return self._text(row, column)
        if role == SORT_ROLE:
            return self._sort_key(row, column)
        if role == Qt.ItemDataRole.ToolTipRole:
            where = f"{row.path}" + (f", frame {row.frame + 1}" if row.frame else "")
            outside = row.outside_reasons
            return where + ("\nOutside what the model was made for:\n" + "\n".join(outside) if outside else "")
        if role == Qt.ItemDataRole.ForegroundRole and row.outside:
            return QColor("#ffb74d")
        if role == Qt.ItemDataRole.ForegroundRole and row.flagged:
            return QColor("#ff8a80")
        if role == Qt.ItemDataRole.TextAlignmentRole and column in (4, 5):
            return int(Qt.AlignmentFlag.AlignRight | Qt.AlignmentFlag.AlignVCenter)
        return None

    @staticmethod
    def _text(row, column: int) -> str:
        image = row.path.name + (f" [{row.frame + 1}]" if row.frame else "")
        confidence = "—" if row.confidence is None else f"{row.confidence:.2f}"
        score = row.ood_score
        outside = ("⚠ outside" if row.outside else "") + (f" ({score:.1f})" if score is not None else "")
        values = (row.patient_id or "—", row.study or "—", image, row.predicted_class, f"{row.probability:.1%}",
                  confidence, outside.strip() or "—", "⚑ flagged" if row.flagged else "")
        return values[column]

    @staticmethod
    def _sort_key(row, column: int):
        confidence = 1.0 if row.confidence is None else row.confidence
        outside = 2.0 if row.outside else 0.0
        if column == FLAGGED_COLUMN:
            # Sorted descending (the default): images outside what the model was made for first (its
            # answer means least there), then flagged ones, the least confident of each group first.
            return outside + (1.0 if row.flagged else 0.0) + (1.0 - confidence) / 2
        if column == OUTSIDE_COLUMN:
            score = row.ood_score
            return outside + (0.0 if score is None else score / (1.0 + abs(score)))
        if column == 4:
            return row.probability
        if column == 5:
            return confidence
        return WorklistModel._text(row, column).lower()


class WorklistFilter(QSortFilterProxyModel):
    """Free text over patient, study, image and class; optionally flagged rows only."""

    def __init__(self, parent=None):
        super().__init__(parent)
        self.text = ""
        self.flagged_only = False
        self.setSortRole(SORT_ROLE)

    def set_text(self, text: str) -> None:
        self.beginFilterChange()
        self.text = text.strip().lower()
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def set_flagged_only(self, on: bool) -> None:
        self.beginFilterChange()
        self.flagged_only = bool(on)
        self.endFilterChange(QSortFilterProxyModel.Direction.Rows)

    def filterAcceptsRow(self, source_row: int, source_parent) -> bool:
        row = self.sourceModel().rows[source_row]
        if self.flagged_only and not row.flagged:
            return False
        if not self.text:
            return True
        return any(self.text in WorklistModel._text(row, c).lower() for c in TEXT_COLUMNS)
