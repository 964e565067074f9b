"""Text probes: the kind of queries people type, for tuning an image index nobody has captioned.

An approximate image index is tuned (``nprobe``, ``efSearch``) until held-out queries find their
exact neighbours. Held-out *images* are easy: they sit among the indexed vectors. Text queries do
not (CLIP's modality gap), so their neighbours spread over more inverted lists, and an index tuned
on images alone can serve them far below its stated recall. When the catalog holds no texts to
hold out, these probes, embedded by the index's own text tower, stand in for the users' queries.
They are not indexed and never returned; they only measure.
"""

from __future__ import annotations

# Short queries of photo search: single things, scenes, activities, with and without detail.
# fmt: off
PROBE_TEXTS: tuple[str, ...] = (
    "dog", "cat", "bird", "horse", "car", "bicycle", "boat", "train", "airplane", "bus",
    "beach", "mountain", "snow", "forest", "river", "lake", "city street", "park", "garden",
    "sunset", "night sky", "rain", "desert", "waterfall", "bridge", "church", "kitchen",
    "birthday cake", "wedding", "concert", "football", "basketball", "swimming pool",
    "a dog running on the grass", "a black cat sleeping on a sofa",
    "children playing in the water", "a man riding a bike down a hill",
    "a woman in a red dress", "two people sitting on a bench",
    "a group of friends at a party", "a baby smiling", "an old man with a beard",
    "a girl jumping into a lake", "a boy throwing a ball", "a surfer riding a wave",
    "a skier going down a snowy slope", "a climber on a rock wall",
    "a crowd watching a parade", "a family eating dinner", "a brown horse in a field",
    "a red car parked on the street", "a boat on a calm sea", "a tall building at night",
    "a plate of food on a table", "flowers in a vase", "a tree in autumn",
    "a snowy mountain under a blue sky", "waves crashing on rocks", "a busy market",
    "a street musician playing guitar", "a man in a suit and tie", "a dog catching a frisbee",
    "kids on a playground", "a person walking in the rain with an umbrella",
    "a motorcyclist doing a jump", "a black and white photo of a city",
    "people hiking on a trail", "a cyclist in a race", "a dog swimming in a river",
    "a cat looking out of a window", "a couple dancing", "fireworks over the city",
    "a little girl with a balloon", "a soccer player kicking the ball",
    "a man fishing from a boat", "a woman reading a book in a park",
    "a crowded beach in summer", "a child on a swing", "sheep in a green field",
    "a train crossing a bridge", "a lighthouse by the sea", "a dog with a stick in its mouth",
)
# fmt: on
