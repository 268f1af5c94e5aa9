"""What Lantern writes for people and other systems, in the packaged app too.

    overlay        heatmap colouring and blending onto the source picture
    pictures       the side-by-side picture (original | explanation)
    report         one self-contained HTML page per study
    dicom_export   the explanation as a DICOM Secondary Capture in the source's study
    dicom_objects  the Secondary Capture, a Parametric Map per class (parametric_map) and a
                   TID 1500 structured report (structured_report), written together
    anonymize      pseudonyms and attribute removal for anonymized exports
    figures        ROC, precision-recall, confusion, reliability and uncertainty plots and
                   contact sheets as PNG
Every file goes through engine.files (atomic, never over a source).
"""
