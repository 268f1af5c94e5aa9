"""Corner annotations: who, when, what and how it is displayed, with identifying text hidden
in teaching mode."""

from __future__ import annotations


def _date(raw: str) -> str:
    return f"{raw[:4]}-{raw[4:6]}-{raw[6:8]}" if len(raw) == 8 and raw.isdigit() else raw


def corner_texts(image, window_cw, zoom: float, hide_identifying: bool) -> dict[str, str]:
    source = image.source
    meta = source.metadata
    if hide_identifying:
        top_left = "Patient: hidden"  # short: presentation mode doubles the font
        study = "Study date: hidden" if meta.study_date else ""
    else:
        # Absent fields are left out: a PNG has no patient, and dashes would only be noise.
        top_left = "\n".join(filter(None, [meta.patient_name,
                                           f"ID: {meta.patient_id}" if meta.patient_id else ""]))
        study = f"Study date: {_date(meta.study_date)}" if meta.study_date else ""
    # Descriptions live in the study browser; corners stay short enough for two viewports.
    top_right = "\n".join(filter(None, [study, f"Modality: {meta.modality}" if meta.modality else ""]))
    center, width = window_cw if window_cw else (source.window.center, source.window.width)
    # In the header's terms (a MONOCHROME1 image is shown inverted; its L is the file's own).
    center, width = source.header_window(center, width)
    bottom_left = f"W {width:.0f}  L {center:.0f}\nZoom {zoom:.2f}×"
    frames = f"Frame {source.frame + 1}/{source.n_frames}\n" if source.n_frames > 1 else ""
    name = "" if hide_identifying else f"{source.path.name}\n"
    bottom_right = f"{name}{frames}Image {image.index + 1}/{image.count}  {source.shape[1]}×{source.shape[0]}"
    return {"top_left": top_left, "top_right": top_right, "bottom_left": bottom_left,
            "bottom_right": bottom_right}
