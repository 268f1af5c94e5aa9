"""Work over many images with one loaded model, in the packaged app too.

    batch          triage a folder or DICOMDIR (resumable; batch_record keeps what is done)
    uncertainty_report  a batch's uncertainty over all its images (figure, flagged.csv/json)
    labels         the labels file (file, class, optional mask)
    evaluation     metrics of labelled cases (evaluation_run runs the analyses for them)
"""
