"""The analysis as a Comprehensive 3D SR following TID 1500 (Measurement Report): what a PACS,
a reporting system or a research pipeline can read without Lantern.

Content tree (DICOM codes where PS3.16 has one, else Lantern's private scheme below):

    Imaging Measurement Report (126000, DCM)
      language, observation context (the device: Lantern and the model), procedure reported,
      image library (the source image, the secondary capture)
      Imaging Measurements
        one Measurement Group (TID 1501) per class, finding type = the class:
          algorithm identification (TID 4019): model name, version, manufacturer; engine, method
          source of measurement: the source image (its frame, for a multi-frame file)
          Probability (122157, DCM)                       softmax(logits / T), dropout off
          Probability, derivation Mean, method MC dropout  mean over the Monte-Carlo samples
          Probability, derivation Standard Deviation        their spread
          Class activation (130402, DCM), derivation Maximum, method the CAM method,
              inferred from the class's parametric map (the link from finding to map)
        one group for the case: confidence (1 - normalized predictive entropy), its threshold,
          whether it is below ("flagged"), the out-of-distribution score, its threshold and the
          verdict ("outside what the model was made for") when the model has the check
      Qualitative Evaluations: text items, the first of them the notice "AI explanation, not for
        primary diagnosis", then why the image is outside, or why uncertainty is missing

Private coding scheme "99LANTERN" (declared in the Coding Scheme Identification Sequence):
    MCDROPOUT        Monte-Carlo dropout (measurement method)
    GRADCAM, GRADCAM++, LAYERCAM   the explanation method (measurement method)
    CONFIDENCE       confidence: 1 - predictive entropy / log(number of classes), in 0..1
    CONFTHRESHOLD    the confidence below which a result is flagged for a closer look
    LOWCONFIDENCE    confidence below that threshold (value: Yes/No, SCT)
    OODSCORE         out-of-distribution score (Mahalanobis distance of the head's features)
    OODTHRESHOLD     the score above which an image is outside
    OUTSIDE          outside what the model was made for (value: Yes/No, SCT)
    NOTICE, OUTSIDEREASON, UNCERTAINTYNOTE   text items for readers
    <class name>     a class of the model (finding type); the model defines the meaning
"""

from __future__ import annotations

import highdicom as hd
from highdicom.coding_schemes import CodingSchemeIdentificationItem
from pydicom.dataset import Dataset
from pydicom.sr.codedict import codes
from pydicom.uid import generate_uid

from engine.analysis import Analysis
from engine.cam import method_label
from engine.exports.pictures import NOT_FOR_DIAGNOSIS
from engine.version import lantern_version

SCHEME = "99LANTERN"
SOFTWARE = f"Lantern {lantern_version()}"
SERIES_DESCRIPTION = f"{NOT_FOR_DIAGNOSIS}: results"
UNITLESS = codes.UCUM.NoUnits
YES, NO = codes.SCT.Yes, codes.SCT.No
# TID 1500's document-level container of qualitative evaluations (UMLS C0034375).
QUALITATIVE_EVALUATIONS = hd.sr.CodedConcept(value="C0034375", scheme_designator="UMLS",
                                             meaning="Qualitative Evaluations")
# The procedure reported (CID 100) by the source's modality; anything else is an imaging procedure.
PROCEDURES = {"CT": codes.cid100.CTUnspecifiedBodyRegion, "MR": codes.cid100.MRIUnspecifiedBodyRegion,
              "DX": codes.cid100.XRUnspecifiedBodyRegion, "CR": codes.cid100.XRUnspecifiedBodyRegion,
              "NM": codes.cid100.NMUnspecifiedBodyRegion, "PT": codes.cid100.PETUnspecifiedBodyRegion}


# What highdicom's image library descriptors read (TID 1603, TID 1604).
PROJECTION = ("PatientOrientation", "ImagerPixelSpacing")
SECTION = ("PixelSpacing", "ImageOrientationPatient", "ImagePositionPatient", "SliceThickness")


def lantern_code(value: str, meaning: str) -> hd.sr.CodedConcept:
    # Code values are SH (no backslash); highdicom moves values over 16 characters to Long Code Value.
    return hd.sr.CodedConcept(value=value.replace("\\", "/"), scheme_designator=SCHEME, meaning=meaning[:64])


MC_DROPOUT = lantern_code("MCDROPOUT", "Monte-Carlo dropout")
CONFIDENCE = lantern_code("CONFIDENCE", "Confidence (1 - normalized predictive entropy)")
CONFIDENCE_THRESHOLD = lantern_code("CONFTHRESHOLD", "Confidence threshold")
LOW_CONFIDENCE = lantern_code("LOWCONFIDENCE", "Confidence below threshold")
OOD_SCORE = lantern_code("OODSCORE", "Out-of-distribution score")
OOD_THRESHOLD = lantern_code("OODTHRESHOLD", "Out-of-distribution threshold")
OUTSIDE = lantern_code("OUTSIDE", "Outside what the model was made for")
NOTICE = lantern_code("NOTICE", "Notice")
OUTSIDE_REASON = lantern_code("OUTSIDEREASON", "Why outside what the model was made for")
UNCERTAINTY_NOTE = lantern_code("UNCERTAINTYNOTE", "Why there is no uncertainty")


def notice(analysis: Analysis, method: str) -> str:
    return (f"{NOT_FOR_DIAGNOSIS}. Probabilities and {method_label(method)} maps from model {analysis.model_name} "
            f"{analysis.model_version} ({analysis.engine} engine), made by {SOFTWARE}.")


def algorithm(analysis: Analysis, method: str, manufacturer: str | None) -> hd.sr.AlgorithmIdentification:
    parameters = [f"engine={analysis.engine}", f"explanation={method_label(method)}"]
    if analysis.uncertainty is not None:
        parameters.append(f"mc_dropout_samples={analysis.uncertainty.samples}")
    return hd.sr.AlgorithmIdentification(name=analysis.model_name, version=analysis.model_version,
                                         parameters=parameters, manufacturer=manufacturer or None)


def class_group(analysis: Analysis, index: int, method: str, source_ref: list, pm: Dataset | None,
                algorithm_id) -> hd.sr.MeasurementsAndQualitativeEvaluations:
    """One class's finding; ``source_ref`` and ``algorithm_id`` are this group's own items (an
    item object placed in two groups would be one object in two places of the data set)."""
    name = analysis.classes[index]
    measurements = [hd.sr.Measurement(name=codes.DCM.Probability, value=float(analysis.probabilities[index]),
                                      unit=UNITLESS)]
    u = analysis.uncertainty
    if u is not None:
        measurements += [
            hd.sr.Measurement(name=codes.DCM.Probability, value=float(u.mean_probabilities[index]), unit=UNITLESS,
                              derivation=codes.SCT.Mean, method=MC_DROPOUT),
            hd.sr.Measurement(name=codes.DCM.Probability, value=float(u.std_probabilities[index]), unit=UNITLESS,
                              derivation=codes.SCT.StandardDeviation, method=MC_DROPOUT)]
    if pm is not None:
        peak = float(analysis.maps[method].source_map(index).max())
        measurements.append(hd.sr.Measurement(
            name=codes.DCM.ClassActivation, value=peak, unit=UNITLESS, derivation=codes.SCT.Maximum,
            method=lantern_code(method.upper(), method_label(method)),
            referenced_images=[hd.sr.SourceImageForMeasurement(pm.SOPClassUID, pm.SOPInstanceUID)]))
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier=f"class {name}"[:64]),
        finding_type=lantern_code(name, name), algorithm_id=algorithm_id, measurements=measurements,
        source_images=source_ref or None)


def case_group(analysis: Analysis, source_ref: list,
               algorithm_id) -> hd.sr.MeasurementsAndQualitativeEvaluations | None:
    """Confidence and the input check, for the case as a whole; None when the result has neither."""
    measurements, evaluations = [], []
    u, check = analysis.uncertainty, analysis.input_check
    if u is not None:
        measurements += [
            hd.sr.Measurement(name=CONFIDENCE, value=float(u.confidence), unit=UNITLESS, method=MC_DROPOUT),
            hd.sr.Measurement(name=CONFIDENCE_THRESHOLD, value=float(u.threshold), unit=UNITLESS)]
        evaluations.append(hd.sr.QualitativeEvaluation(LOW_CONFIDENCE, YES if u.flagged else NO))
    if check.score is not None:
        measurements.append(hd.sr.Measurement(name=OOD_SCORE, value=float(check.score), unit=UNITLESS))
        if check.threshold is not None:
            measurements.append(hd.sr.Measurement(name=OOD_THRESHOLD, value=float(check.threshold), unit=UNITLESS))
    if check.score is not None or check.tag_reasons:
        evaluations.append(hd.sr.QualitativeEvaluation(OUTSIDE, YES if check.outside else NO))
    if not (measurements or evaluations):
        return None
    return hd.sr.MeasurementsAndQualitativeEvaluations(
        tracking_identifier=hd.sr.TrackingIdentifier(uid=generate_uid(), identifier="confidence and input check"),
        algorithm_id=algorithm_id, measurements=measurements or None, qualitative_evaluations=evaluations or None,
        source_images=source_ref or None)


def texts(analysis: Analysis, method: str) -> hd.sr.ContainerContentItem:
    container = hd.sr.ContainerContentItem(name=QUALITATIVE_EVALUATIONS,
                                           relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
    items = [(NOTICE, notice(analysis, method))]
    items += [(OUTSIDE_REASON, reason) for reason in analysis.input_check.reasons]
    if analysis.uncertainty is None and analysis.uncertainty_note:
        items.append((UNCERTAINTY_NOTE, analysis.uncertainty_note))
    container.ContentSequence = hd.sr.ContentSequence([
        hd.sr.TextContentItem(name=name, value=value, relationship_type=hd.sr.RelationshipTypeValues.CONTAINS)
        for name, value in items])
    return container


def structured_report(study: Dataset, analysis: Analysis, method: str, *, source: Dataset | None,
                      maps: dict[int, Dataset], pictures: list[Dataset], series_uid: str, series_number: int,
                      instance_number: int = 1, frame: int | None = None,
                      model_manufacturer: str | None = None) -> Dataset:
    """The report of one analysed image.

    ``study`` gives the patient and study (the source, or a PNG's stand-in); ``source`` is the
    image the measurements were made on (None for a PNG: no DICOM instance to point at);
    ``maps``: class index -> its parametric map; ``pictures``: the secondary capture(s) written
    beside it, listed in the image library; ``frame``: the 0-based frame of a multi-frame source."""
    frames = [frame + 1] if frame is not None else None

    def source_ref() -> list:
        return ([hd.sr.SourceImageForMeasurementGroup(source.SOPClassUID, source.SOPInstanceUID, frames)]
                if source is not None else [])

    groups = [class_group(analysis, i, method, source_ref(), maps.get(i),
                          algorithm(analysis, method, model_manufacturer)) for i in range(len(analysis.classes))]
    case = case_group(analysis, source_ref(), algorithm(analysis, method, model_manufacturer))
    groups += [case] if case is not None else []
    observer = hd.sr.ObserverContext(
        observer_type=codes.cid270.Device,
        observer_identifying_attributes=hd.sr.DeviceObserverIdentifyingAttributes(
            # One UID per model version: the same "device" across every report it made.
            uid=generate_uid(entropy_srcs=["lantern-device", analysis.model_name, analysis.model_version]),
            name="Lantern", manufacturer_name="Lantern",
            model_name=f"{analysis.model_name} {analysis.model_version}"[:64]))
    modality = str(study.get("Modality", "") or "").upper()
    # The maps are referenced by their findings' activation measurements and listed as evidence;
    # highdicom's image library does not know the Parametric Map class (no coded modality for it).
    library = [_library_view(ds) for ds in ([source] if source is not None else []) + list(pictures)]
    report = hd.sr.MeasurementReport(
        observation_context=hd.sr.ObservationContext(observer_device_context=observer),
        procedure_reported=PROCEDURES.get(modality, codes.cid100.ImagingProcedure),
        imaging_measurements=groups, referenced_images=library or None)
    report[0].ContentSequence.append(texts(analysis, method))
    evidence = [study if source is None else source, *maps.values(), *pictures]
    sr = hd.sr.Comprehensive3DSR(
        evidence=evidence, content=report, series_instance_uid=series_uid, series_number=series_number,
        sop_instance_uid=generate_uid(), instance_number=instance_number, manufacturer="Lantern",
        is_complete=True, is_final=False, is_verified=False, series_description=SERIES_DESCRIPTION,
        manufacturer_model_name=f"{analysis.model_name} {analysis.model_version}"[:64],
        software_versions=SOFTWARE, specific_character_set="ISO_IR 192",
        coding_schemes=[CodingSchemeIdentificationItem(designator=SCHEME, name="Lantern private codes",
                                                       responsible_organization="Lantern")])
    if source is None:
        _forget(sr, study.SOPInstanceUID)
    return sr


def _library_view(ds: Dataset) -> Dataset:
    """``ds`` as the image library sees it: highdicom describes a radiograph or a slice by its
    spacing, orientation and position, and fails where the file lacks them (a radiograph without
    Imager Pixel Spacing, a secondary capture of one); such an image is listed with the general
    descriptors (rows, columns, frame of reference) only."""
    needed = {"CR": PROJECTION, "DX": PROJECTION, "IO": PROJECTION, "MG": PROJECTION, "PX": PROJECTION,
              "RF": PROJECTION, "RG": PROJECTION, "XA": PROJECTION, "CT": SECTION, "MR": SECTION, "PT": SECTION}
    view = Dataset()
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Rows", "Columns", "FrameOfReferenceUID", "Modality",
                    *PROJECTION, *SECTION):
        if keyword in ds:
            view.add(ds.data_element(keyword))  # the same elements, read only: the source stays as it is
    keywords = needed.get(str(ds.get("Modality", "")), ())
    if any(not ds.get(k) for k in keywords) or ("PatientOrientation" in keywords and len(ds.PatientOrientation) != 2):
        view.add_new("Modality", "CS", "OT")  # a new element: setting the value would change the source's
    return view


def _forget(sr: Dataset, uid: str) -> None:
    """Drop the PNG stand-in (it only lent the study) from the evidence lists: it is no instance."""
    for keyword in ("CurrentRequestedProcedureEvidenceSequence", "PertinentOtherEvidenceSequence"):
        for study in list(sr.get(keyword, [])):
            for series in list(study.ReferencedSeriesSequence):
                series.ReferencedSOPSequence = [i for i in series.ReferencedSOPSequence
                                                if i.ReferencedSOPInstanceUID != uid]
                if not series.ReferencedSOPSequence:
                    study.ReferencedSeriesSequence.remove(series)
            if not study.ReferencedSeriesSequence:
                sr.data_element(keyword).value.remove(study)
        if keyword in sr and not sr.data_element(keyword).value:
            delattr(sr, keyword)


__all__ = ["structured_report", "SCHEME", "lantern_code", "notice"]
