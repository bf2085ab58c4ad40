# Shared settings of all rules.

wildcard_constraints:
    event=r"\d{9}",


if CFG.data.source == "trackml":
    try:
        CTX.check_trackml_events()
    except ConfigError as err:
        raise WorkflowError(str(err)) from None


def split_files(stage, split, ext="pt"):
    return CTX.stage_files(stage, split, ext)
