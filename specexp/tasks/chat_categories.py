"""Chat prompts of fifteen kinds, three each, written for this project (none comes from a dataset
a build trains on): how a drafter trained on some kinds of instruction does on others. Each
sample's category is its kind, so metrics.json["categories"] and `specexp-report` give acceptance
and speed per kind (specexp/report/categories.py).

    specexp model_pair=smollm2-135m__eagle dataset=chat_categories
    python scripts/eagle_acceptance.py --datasets chat_categories   # acceptance by kind, no timing

`TRAINED_AS` names, for each kind, the build instruction kind that asks for the same thing
(specexp/builds/instruction_mix.py), or None for kinds no build mix holds: writing, roleplay,
open questions, advice, brainstorming, classification, comparison and reasoning."""
from __future__ import annotations

from specexp.tasks.base import Sample, Task

PROMPTS = {
    "writing": [
        "Write a short poem about a lighthouse keeper who has never seen the sea in daylight.",
        "Write the opening paragraph of a mystery story set in a bakery.",
        "Write a friendly email inviting my neighbours to a garden party on Saturday afternoon.",
    ],
    "roleplay": [
        "You are a tour guide in ancient Rome. Greet our group and tell us what we will see today.",
        "Pretend you are a pirate captain explaining to a new sailor how to tie a knot.",
        "Act as a librarian helping me choose a book for a long train journey.",
    ],
    "open_qa": [
        "Why do leaves change colour in autumn?",
        "How does a refrigerator keep food cold?",
        "What causes the tides in the ocean?",
    ],
    "advice": [
        "I keep forgetting to drink water during the day. What can I do?",
        "How should I prepare for my first job interview?",
        "What are some good ways to save money on groceries?",
    ],
    "brainstorm": [
        "Give me ten names for a cat who likes to sleep in shoes.",
        "List some fun things to do on a rainy weekend with children.",
        "Suggest themes for a school science fair project about water.",
    ],
    "classification": [
        "Is this review positive or negative? \"The soup was cold and the waiter ignored us for an hour.\"",
        "Sort these into fruits and vegetables: carrot, apple, spinach, banana, onion, cherry.",
        "Which of these animals are mammals: shark, dolphin, eagle, bat, frog, whale?",
    ],
    "comparison": [
        "Compare living in a big city with living in a small village.",
        "What are the differences between a laptop and a tablet for a student?",
        "Compare trains and planes for a 500 kilometre trip.",
    ],
    "reasoning": [
        "If all bloops are razzies and all razzies are lazzies, are all bloops lazzies? Explain.",
        "Tom is taller than Ana, and Ana is taller than Ben. Who is the shortest, and why?",
        "A farmer has a fox, a chicken and a sack of grain and must cross a river in a boat that carries one "
        "item at a time. How does he do it?",
    ],
    "extraction": [
        "Extract every date from this text: The bridge opened on 4 May 1931, closed for repairs on 12 June 1987, "
        "and reopened on 1 March 1990.",
        "From this sentence, list the ingredients: Mix two eggs, a cup of flour, some milk and a pinch of salt.",
        "Name the cities in this text: After leaving Lisbon, the band played in Madrid, Lyon and finally Vienna.",
    ],
    "translation": [
        "Translate into French: The library opens at nine o'clock every morning.",
        "Translate into Spanish: My brother likes to cook dinner on Sundays.",
        "Translate into German: The weather will be sunny tomorrow.",
    ],
    "rewriting": [
        "Rewrite this sentence to sound more formal: Hey, can you send me that report thing by tomorrow?",
        "Make this shorter: In the event that it happens to rain on the day of the picnic, we will have to "
        "postpone the picnic until a later date.",
        "Rewrite in the past tense: She walks to the market, buys apples and talks with the baker.",
    ],
    "rag": [
        "Read the passage and answer the question.\n\nPassage: The Amazon river flows through Peru, Colombia and "
        "Brazil before reaching the Atlantic Ocean. It carries more water than any other river.\n\n"
        "Question: Which ocean does the Amazon reach?",
        "Using only this text, answer: what time does the museum close on Fridays?\n\nText: The museum opens at "
        "10am daily. It closes at 6pm, except on Fridays, when it stays open until 9pm.",
        "Context: Marie Curie won the Nobel Prize in Physics in 1903 and in Chemistry in 1911.\n\n"
        "Question: In which two fields did she win Nobel Prizes?",
    ],
    "summarization": [
        "Summarize in one sentence: The town council met on Tuesday to discuss the new park. Residents asked for "
        "more benches and a playground, and the council agreed to add both before the summer.",
        "Summarize this in one sentence: Scientists found that bees can recognise human faces by learning "
        "patterns, much as people do, which may help engineers design better face recognition software.",
        "Give a one-sentence summary: The school will close early on Friday because of a planned power cut. "
        "Buses will leave at noon and lunch will be served at eleven.",
    ],
    "math": [
        "A shop sells pencils at 3 for 1 dollar. How much do 27 pencils cost?",
        "Sara reads 12 pages a day. How many days does she need for a 180 page book?",
        "A train leaves at 2:15 pm and arrives at 5:40 pm. How long is the trip?",
    ],
    "code": [
        "Write a Python function that returns the largest even number in a list, or None if there is none.",
        "Write a Python function that counts the vowels in a string.",
        "Write a Python function that checks whether a word is a palindrome.",
    ],
}
TRAINED_AS = {  # the build instruction kind (instruction_mix.KINDS) asking for the same thing; None: no build mix has it
    "writing": None, "roleplay": None, "open_qa": None, "advice": None, "brainstorm": None,
    "classification": None, "comparison": None, "reasoning": None,
    "extraction": "extract", "translation": "translate", "rewriting": "rewrite", "rag": "questions",
    "summarization": "xsum", "math": "gsm8k", "code": "code",
}


class ChatCategories(Task):
    name = "chat_categories"
    version = "1"  # bump when the prompts change

    def load(self) -> list[Sample]:
        return [Sample(f"{cat}/{i}", text, category=cat) for cat, texts in PROMPTS.items()
                for i, text in enumerate(texts)]
