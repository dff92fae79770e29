"""Head discovery: record one forward (``recorder``), classify its ops (``ops``), fold the
affine head (``fold``), analyse the path from the logits to the global pooling (``heads``) and
cache what was found per live model (``cache``)."""
