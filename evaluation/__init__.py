"""How well an encoder finds translations and answers searches: `dapsearch eval`.

It sits above model and index, since it measures encoders with index's mining, and nothing
below it imports it (training keeps its own small dev P@1).
"""
