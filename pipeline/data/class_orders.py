"""The official class orders of class-incremental ImageNet-R, CUB200 and DomainNet (data only).

Generated once from the official MagMax code (GitHub danielm1405/magmax, commit 4f49f18:
src/datasets/{imagenetr,cub200,domainnet}.py, `default_class_order`). Each order is a list of
*official labels*: the index of a class in the official code's torchvision `ImageFolder`, i.e.
in its class folder names sorted as strings (uppercase before lowercase). `pipeline.data.splits`
maps the official labels to class names and the names to this project's labels, so a task holds
the same classes whatever numbering a loader gives them.

* ImageNet-R: the official code renames each wnid folder to its class name (README.txt of the
  archive), so its labels index `IMAGENET_R_LABEL_NAMES` (the 200 names sorted as strings).
* DomainNet: its labels index `DOMAINNET_LABEL_NAMES`, the 345 class folders sorted as strings
  (The_Eiffel_Tower first); not the label numbers of DomainNet's own *_train.txt lists.
* CUB200: the class folders are "001.Black_footed_Albatross" ... "200.Common_Yellowthroat";
  their zero-padded id prefix makes the string order the id order, so official label = id - 1.

The official ImageNet-R and CUB200 orders are the same list (the official code uses one list
for both).
"""

from __future__ import annotations

IMAGENET_R_LABEL_NAMES: tuple[str, ...] = (
    "African_chameleon", "Granny_Smith", "accordion", "acorn", "afghan_hound", "ambulance",
    "american_egret", "ant", "assault_rifle", "axolotl", "baboon", "backpack", "badger", "bagel",
    "bald_eagle", "banana", "barn", "baseball_player", "basketball", "basset_hound", "bathtub",
    "beagle", "beaver", "bee", "beer_glass", "bell_pepper", "binoculars", "birdhouse", "bison",
    "black_swan", "bloodhound", "border_collie", "boston_terrier", "bow_tie", "boxer", "broccoli",
    "broom", "bucket", "burrito", "cabbage", "candle", "cannon", "canoe", "carousel", "castle",
    "cauldron", "centipede", "cheeseburger", "cheetah", "chihuahua", "chimpanzee", "chow_chow",
    "clown_fish", "cobra", "cocker_spaniels", "cockroach", "collie", "cowboy_hat", "cucumber",
    "dalmatian", "dragonfly", "duck", "eel", "electric_guitar", "espresso", "fire_engine",
    "flamingo", "flute", "fly", "fox_squirrel", "french_bulldog", "gasmask", "gazelle",
    "german_shepherd_dog", "gibbon", "golden_retriever", "goldfinch", "goldfish", "goose",
    "gorilla", "grand_piano", "grasshopper", "great_white_shark", "grey_whale", "guillotine",
    "guinea_pig", "hammer", "hammerhead", "harmonica", "harp", "hatchet", "hen", "hermit_crab",
    "hippopotamus", "hotdog", "hummingbird", "husky", "hyena", "ice_cream", "iguana",
    "italian_greyhound", "jeep", "jellyfish", "joystick", "junco", "killer_whale", "king_penguin",
    "koala", "lab_coat", "labrador_retriever", "ladybug", "lawn_mower", "lemon", "leopard",
    "lighthouse", "lion", "lipstick", "llama", "lobster", "lorikeet", "mailbox", "mantis",
    "meerkat", "military_aircraft", "missile", "mitten", "mobile_phone", "monarch_butterfly",
    "mushroom", "newt", "orangutan", "ostrich", "panda", "parachute", "peacock", "pelican",
    "pembroke_welsh_corgi", "pickup_truck", "pig", "pineapple", "pirate_ship", "pizza",
    "polar_bear", "pomegranate", "pomeranian", "porcupine", "pretzel", "puffer_fish", "pug",
    "red_fox", "revolver", "rottweiler", "rugby_ball", "saint_bernard", "sandal", "saxophone",
    "scarf", "school_bus", "schooner", "scorpion", "scottish_terrier", "scuba_diver", "sea_lion",
    "shield", "shih_tzu", "skunk", "snail", "snow_leopard", "soccer_ball", "space_shuttle",
    "spider_web", "standard_poodle", "starfish", "steam_locomotive", "stingray", "strawberry",
    "submarine", "tabby_cat", "tank", "tarantula", "tennis_ball", "tiger", "timber_wolf", "toucan",
    "toy_poodle", "tractor", "tree_frog", "trombone", "vase", "violin", "volcano", "vulture",
    "weimaraner", "west_highland_white_terrier", "wheelbarrow", "whippet", "wine_bottle",
    "wood_rabbit", "yorkshire_terrier", "zebra",
)  # fmt: skip

IMAGENET_R_ORDER: tuple[int, ...] = (
    186, 157, 67, 59, 117, 1, 122, 14, 131, 40, 66, 199, 92, 170, 197, 118, 173, 37, 146, 191, 4,
    198, 64, 56, 51, 165, 0, 107, 175, 148, 187, 161, 137, 180, 133, 181, 177, 12, 20, 74, 143, 142,
    110, 116, 194, 138, 183, 89, 45, 121, 190, 94, 36, 83, 130, 120, 21, 38, 125, 145, 182, 103,
    105, 61, 32, 141, 13, 112, 111, 104, 26, 69, 39, 156, 147, 108, 72, 10, 96, 188, 16, 63, 152,
    86, 160, 119, 184, 7, 172, 132, 44, 42, 82, 15, 114, 127, 85, 168, 55, 65, 3, 95, 171, 176, 33,
    43, 17, 97, 163, 62, 75, 123, 128, 124, 99, 29, 28, 166, 41, 35, 76, 77, 5, 84, 102, 60, 78, 70,
    164, 113, 30, 91, 81, 18, 155, 179, 73, 46, 80, 31, 150, 79, 174, 153, 50, 144, 9, 167, 134,
    135, 101, 49, 106, 154, 23, 100, 48, 25, 71, 139, 162, 158, 159, 87, 90, 11, 24, 57, 19, 52,
    129, 140, 178, 53, 169, 195, 126, 47, 151, 136, 22, 58, 34, 8, 185, 54, 109, 193, 68, 192, 149,
    115, 98, 88, 93, 6, 196, 189, 2, 27,
)  # fmt: skip

CUB200_ORDER: tuple[int, ...] = (
    186, 157, 67, 59, 117, 1, 122, 14, 131, 40, 66, 199, 92, 170, 197, 118, 173, 37, 146, 191, 4,
    198, 64, 56, 51, 165, 0, 107, 175, 148, 187, 161, 137, 180, 133, 181, 177, 12, 20, 74, 143, 142,
    110, 116, 194, 138, 183, 89, 45, 121, 190, 94, 36, 83, 130, 120, 21, 38, 125, 145, 182, 103,
    105, 61, 32, 141, 13, 112, 111, 104, 26, 69, 39, 156, 147, 108, 72, 10, 96, 188, 16, 63, 152,
    86, 160, 119, 184, 7, 172, 132, 44, 42, 82, 15, 114, 127, 85, 168, 55, 65, 3, 95, 171, 176, 33,
    43, 17, 97, 163, 62, 75, 123, 128, 124, 99, 29, 28, 166, 41, 35, 76, 77, 5, 84, 102, 60, 78, 70,
    164, 113, 30, 91, 81, 18, 155, 179, 73, 46, 80, 31, 150, 79, 174, 153, 50, 144, 9, 167, 134,
    135, 101, 49, 106, 154, 23, 100, 48, 25, 71, 139, 162, 158, 159, 87, 90, 11, 24, 57, 19, 52,
    129, 140, 178, 53, 169, 195, 126, 47, 151, 136, 22, 58, 34, 8, 185, 54, 109, 193, 68, 192, 149,
    115, 98, 88, 93, 6, 196, 189, 2, 27,
)  # fmt: skip

DOMAINNET_LABEL_NAMES: tuple[str, ...] = (
    "The_Eiffel_Tower", "The_Great_Wall_of_China", "The_Mona_Lisa", "aircraft_carrier", "airplane",
    "alarm_clock", "ambulance", "angel", "animal_migration", "ant", "anvil", "apple", "arm",
    "asparagus", "axe", "backpack", "banana", "bandage", "barn", "baseball", "baseball_bat",
    "basket", "basketball", "bat", "bathtub", "beach", "bear", "beard", "bed", "bee", "belt",
    "bench", "bicycle", "binoculars", "bird", "birthday_cake", "blackberry", "blueberry", "book",
    "boomerang", "bottlecap", "bowtie", "bracelet", "brain", "bread", "bridge", "broccoli", "broom",
    "bucket", "bulldozer", "bus", "bush", "butterfly", "cactus", "cake", "calculator", "calendar",
    "camel", "camera", "camouflage", "campfire", "candle", "cannon", "canoe", "car", "carrot",
    "castle", "cat", "ceiling_fan", "cell_phone", "cello", "chair", "chandelier", "church",
    "circle", "clarinet", "clock", "cloud", "coffee_cup", "compass", "computer", "cookie", "cooler",
    "couch", "cow", "crab", "crayon", "crocodile", "crown", "cruise_ship", "cup", "diamond",
    "dishwasher", "diving_board", "dog", "dolphin", "donut", "door", "dragon", "dresser", "drill",
    "drums", "duck", "dumbbell", "ear", "elbow", "elephant", "envelope", "eraser", "eye",
    "eyeglasses", "face", "fan", "feather", "fence", "finger", "fire_hydrant", "fireplace",
    "firetruck", "fish", "flamingo", "flashlight", "flip_flops", "floor_lamp", "flower",
    "flying_saucer", "foot", "fork", "frog", "frying_pan", "garden", "garden_hose", "giraffe",
    "goatee", "golf_club", "grapes", "grass", "guitar", "hamburger", "hammer", "hand", "harp",
    "hat", "headphones", "hedgehog", "helicopter", "helmet", "hexagon", "hockey_puck",
    "hockey_stick", "horse", "hospital", "hot_air_balloon", "hot_dog", "hot_tub", "hourglass",
    "house", "house_plant", "hurricane", "ice_cream", "jacket", "jail", "kangaroo", "key",
    "keyboard", "knee", "knife", "ladder", "lantern", "laptop", "leaf", "leg", "light_bulb",
    "lighter", "lighthouse", "lightning", "line", "lion", "lipstick", "lobster", "lollipop",
    "mailbox", "map", "marker", "matches", "megaphone", "mermaid", "microphone", "microwave",
    "monkey", "moon", "mosquito", "motorbike", "mountain", "mouse", "moustache", "mouth", "mug",
    "mushroom", "nail", "necklace", "nose", "ocean", "octagon", "octopus", "onion", "oven", "owl",
    "paint_can", "paintbrush", "palm_tree", "panda", "pants", "paper_clip", "parachute", "parrot",
    "passport", "peanut", "pear", "peas", "pencil", "penguin", "piano", "pickup_truck",
    "picture_frame", "pig", "pillow", "pineapple", "pizza", "pliers", "police_car", "pond", "pool",
    "popsicle", "postcard", "potato", "power_outlet", "purse", "rabbit", "raccoon", "radio", "rain",
    "rainbow", "rake", "remote_control", "rhinoceros", "rifle", "river", "roller_coaster",
    "rollerskates", "sailboat", "sandwich", "saw", "saxophone", "school_bus", "scissors",
    "scorpion", "screwdriver", "sea_turtle", "see_saw", "shark", "sheep", "shoe", "shorts",
    "shovel", "sink", "skateboard", "skull", "skyscraper", "sleeping_bag", "smiley_face", "snail",
    "snake", "snorkel", "snowflake", "snowman", "soccer_ball", "sock", "speedboat", "spider",
    "spoon", "spreadsheet", "square", "squiggle", "squirrel", "stairs", "star", "steak", "stereo",
    "stethoscope", "stitches", "stop_sign", "stove", "strawberry", "streetlight", "string_bean",
    "submarine", "suitcase", "sun", "swan", "sweater", "swing_set", "sword", "syringe", "t-shirt",
    "table", "teapot", "teddy-bear", "telephone", "television", "tennis_racquet", "tent", "tiger",
    "toaster", "toe", "toilet", "tooth", "toothbrush", "toothpaste", "tornado", "tractor",
    "traffic_light", "train", "tree", "triangle", "trombone", "truck", "trumpet", "umbrella",
    "underwear", "van", "vase", "violin", "washing_machine", "watermelon", "waterslide", "whale",
    "wheel", "windmill", "wine_bottle", "wine_glass", "wristwatch", "yoga", "zebra", "zigzag",
)  # fmt: skip

DOMAINNET_ORDER: tuple[int, ...] = (
    76, 44, 168, 324, 291, 274, 118, 223, 113, 269, 279, 105, 6, 30, 248, 56, 230, 101, 148, 143,
    307, 33, 325, 19, 221, 71, 161, 130, 200, 306, 94, 195, 224, 320, 340, 253, 37, 158, 189, 201,
    97, 150, 18, 159, 311, 334, 266, 321, 284, 203, 182, 67, 214, 136, 267, 296, 4, 41, 226, 11,
    283, 126, 210, 193, 132, 167, 72, 16, 63, 7, 241, 251, 282, 254, 149, 218, 204, 28, 302, 222,
    103, 231, 96, 106, 146, 121, 270, 119, 74, 145, 120, 38, 252, 114, 256, 140, 225, 22, 124, 185,
    322, 215, 264, 42, 23, 292, 265, 174, 313, 129, 285, 69, 43, 34, 301, 219, 257, 21, 229, 48,
    234, 309, 66, 310, 24, 202, 261, 68, 271, 176, 316, 186, 196, 315, 319, 134, 54, 60, 70, 288,
    194, 245, 268, 147, 337, 281, 326, 235, 47, 187, 243, 213, 181, 255, 212, 92, 77, 294, 17, 49,
    331, 144, 197, 190, 155, 117, 323, 53, 50, 341, 191, 178, 308, 100, 61, 237, 83, 0, 1, 14, 205,
    238, 40, 81, 183, 220, 112, 98, 135, 31, 35, 276, 172, 258, 125, 286, 295, 343, 25, 184, 65, 32,
    26, 151, 84, 206, 10, 39, 318, 91, 13, 87, 99, 277, 240, 62, 156, 262, 188, 211, 166, 317, 247,
    328, 289, 217, 169, 232, 330, 246, 173, 46, 51, 244, 228, 208, 64, 152, 249, 179, 198, 55, 20,
    15, 128, 154, 303, 116, 171, 278, 59, 73, 45, 180, 177, 314, 110, 312, 141, 36, 27, 163, 175,
    339, 95, 78, 259, 162, 142, 272, 57, 233, 260, 2, 137, 209, 102, 300, 216, 304, 3, 227, 89, 104,
    52, 263, 239, 90, 93, 170, 133, 80, 336, 297, 8, 250, 79, 82, 108, 138, 280, 88, 192, 333, 344,
    275, 298, 327, 157, 9, 85, 287, 335, 127, 111, 290, 299, 29, 242, 329, 293, 199, 236, 58, 75,
    86, 5, 165, 273, 107, 153, 123, 332, 305, 160, 207, 139, 338, 122, 342, 131, 164, 12, 115, 109,
)  # fmt: skip
