"""Instruction phrasings for image prompts (our own sentences, in the reference's style)."""

from __future__ import annotations

__all__ = ["FROM_TEXT", "TO_TEXT"]

#: Ask for a description of an image (the image span follows the sentence).
TO_TEXT = (
    "Tell me what this picture shows.",
    "Write a short caption for the following image.",
    "What is happening in this photo?",
    "Give a brief description of the image below.",
    "Summarize the contents of this picture in one sentence.",
    "Look at this image and describe what you see.",
    "Describe the main subject of this photograph.",
    "Provide a concise caption that fits this image.",
    "What can be seen in the following picture?",
    "Explain in a few words what this image depicts.",
    "Caption this photo for someone who cannot see it.",
    "Name the objects and the setting shown in this image.",
    "How would you describe this scene?",
    "Write one sentence that captures what this picture is about.",
    "Describe the image, mentioning its most notable details.",
    "What does this photograph portray?",
    "Put the content of this image into words.",
    "Give this picture a descriptive caption.",
    "Briefly report what appears in the image that follows.",
    "Describe this visual in plain language.",
)

#: Ask for an image from a text (followed by "This is input: {text}").
FROM_TEXT = (
    "Draw a picture that matches this description.",
    "Create an image based on the following text.",
    "Generate a photo that shows what this caption says.",
    "Turn this description into an image.",
    "Paint a scene that illustrates the text below.",
    "Produce a picture of what is described here.",
    "Render an image that fits this caption.",
    "Make a visual depiction of the following sentence.",
    "Show me an image of this.",
    "Illustrate the following description with a picture.",
    "Compose an image that captures this scene.",
    "Generate a picture inspired by this text.",
    "Sketch out the scene described in these words.",
    "Create a photograph that corresponds to this caption.",
    "Visualize this description as an image.",
    "Depict the following text in a single picture.",
    "Design an image that conveys what this sentence says.",
    "Produce an illustration for this caption.",
    "Imagine this scene and draw it.",
    "Transform the following words into a picture.",
)
