"""birdlive.web: `birdlive serve`, the birder's web page over the detection database (--db): live detections, the
day's species, clips, the hour-by-species chart, stream health, search, and reviews. Needs birdlive[web] (Jinja2).

A layer beside the archive and training: it reads the database module and the summary chart from the sinks, and
nothing imports it but the command line."""
