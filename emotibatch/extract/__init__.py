"""The extraction job, in data-path order: decode -> face_stage (detect, embed) -> output (staging) ->
finalize (track, commit); pipeline drives it from the Ray driver."""
